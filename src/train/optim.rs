//! AdamW exactly as `torch.optim.AdamW` (its single-tensor CPU path), on host f32 vectors, and gradient
//! clipping by the global norm as `torch.nn.utils.clip_grad_norm_`. burn's own AdamW differs (eps 1e-5 and
//! weight decay 1e-4 by default, its own moment update) and clips per parameter, so the trainer keeps its
//! parameters and moments on the host: they are small (LoRA factors and an adapter), and the same code then
//! runs on every backend and in wasm, deterministically.

use serde::{Deserialize, Serialize};

/// Moments of one parameter tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

/// AdamW state: the step count and each tensor's moments (in the trainables' order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    pub moments: Vec<Moments>,
}

impl AdamW {
    pub fn new(lr: f64, betas: [f64; 2], eps: f64, weight_decay: f64, sizes: impl IntoIterator<Item = usize>) -> Self {
        let moments = sizes.into_iter().map(|n| Moments { exp_avg: vec![0.0; n], exp_avg_sq: vec![0.0; n] }).collect();
        Self { lr, betas, eps, weight_decay, step: 0, moments }
    }

    /// One step at learning rate `lr` over `params` with their `grads` (same order and sizes as at
    /// construction).
    pub fn step(&mut self, lr: f64, params: &mut [Vec<f32>], grads: &[Vec<f32>]) {
        assert_eq!(params.len(), self.moments.len(), "AdamW: parameter count changed");
        self.step += 1;
        let [beta1, beta2] = self.betas;
        let bias_correction1 = 1.0 - beta1.powi(self.step as i32);
        let bias_correction2 = 1.0 - beta2.powi(self.step as i32);
        let step_size = (lr / bias_correction1) as f32;
        let bias_correction2_sqrt = bias_correction2.sqrt() as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let (w1, b2, w2, eps) = ((1.0 - beta1) as f32, beta2 as f32, (1.0 - beta2) as f32, self.eps as f32);
        for ((p, g), m) in params.iter_mut().zip(grads).zip(&mut self.moments) {
            for i in 0..p.len() {
                p[i] *= decay;
                // exp_avg.lerp_(grad, 1 − β1): torch computes self + w·(end − self) for w < 0.5.
                m.exp_avg[i] += w1 * (g[i] - m.exp_avg[i]);
                m.exp_avg_sq[i] = m.exp_avg_sq[i] * b2 + w2 * g[i] * g[i];
                let denom = m.exp_avg_sq[i].sqrt() / bias_correction2_sqrt + eps;
                p[i] -= step_size * m.exp_avg[i] / denom;
            }
        }
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (coefficient max_norm / (norm + 1e-6),
/// capped at 1, as PyTorch); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
    if coef < 1.0 {
        grads.iter_mut().flatten().for_each(|g| *g *= coef);
    }
    norm
}

/// The L2 norm of all gradients together.
pub fn global_norm(grads: &[Vec<f32>]) -> f64 {
    grads.iter().flatten().map(|&g| g as f64 * g as f64).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_about_lr_against_its_gradient() {
        let mut opt = AdamW::new(0.1, [0.9, 0.999], 1e-8, 0.0, [3]);
        let mut params = vec![vec![1.0f32, -2.0, 0.5]];
        opt.step(0.1, &mut params, &[vec![3.0, -0.01, 0.0]]);
        assert!((params[0][0] - 0.9).abs() < 1e-5 && (params[0][1] + 1.9).abs() < 1e-5 && params[0][2] == 0.5, "{params:?}");
    }

    #[test]
    fn clipping_scales_to_the_norm() {
        let mut grads = vec![vec![3.0f32], vec![4.0]];
        assert_eq!(clip_grad_norm(&mut grads, 1.0), 5.0);
        assert!((global_norm(&grads) - 1.0).abs() < 1e-5);
    }
}
