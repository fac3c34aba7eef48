//! Control-CLIP fine-tuning end to end on a small labelled shapes set (tests/fixtures/finetune/shapes: 24
//! training and 24 held-out pictures of 4 categories × 3 styles, rendered by tools/shapes from seeds used
//! nowhere else) with the default model's CLIP (tools/shapes/model/clip), on the CPU backend.

use std::path::PathBuf;

use crate::common::{block_on, fixtures};
use control_clip::train::TrainConfig;
use control_clip::train::eval::{EvalReport, evaluate};
use control_clip::train::finetune::Trainer;
use control_clip::train::load::{Loaded, load};
use control_clip::train::losses::Frozen;
use control_clip::{BackendKind, init_device};

fn shapes_clip() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/shapes/model/clip")
}

fn data(split: &str) -> Loaded {
    let device = block_on(init_device(BackendKind::Cpu)).unwrap();
    let clip = shapes_clip();
    block_on(load(&clip, &clip, &fixtures().join("finetune/shapes").join(split), None, None, &device)).unwrap()
}

/// A short run: the settings a test can afford (seconds), not the product's defaults.
fn small_config() -> TrainConfig {
    let mut cfg = TrainConfig { steps: 30, batch: 12, triplets: 4, keep_prompts: 4, lr: 3e-3, adapter_dim: 32, seed: 7, ..TrainConfig::default() };
    cfg.lora.r = 4;
    cfg.lora.lora_alpha = 8.0;
    cfg
}

/// Trains with `cfg` and evaluates on the held-out set; returns the per-step totals and the report.
fn train(cfg: TrainConfig, train: &Loaded, heldout: &Loaded) -> (Vec<f32>, EvalReport) {
    block_on(async {
        let mut trainer = Trainer::new(cfg.clone(), &train.base, &train.clip.text, train.data.clone()).await.unwrap();
        let mut totals = Vec::new();
        while trainer.step < cfg.steps {
            totals.push(trainer.train_step().await.unwrap().losses[7]);
        }
        let leaves = trainer.trainables.leaves(&train.base.device()).unwrap();
        let frozen = Frozen { base: &heldout.base, projection: &heldout.clip.text, unet: None };
        let report = evaluate(&frozen, leaves.category.encoder(), leaves.style.encoder(), &leaves.adapter, &heldout.data).await.unwrap();
        (totals, report)
    })
}

/// The margin by which A∘f_s must beat E on held-out style accuracy (3 styles, chance 33 %): 5 more of the
/// 24 pictures. Measured: E 7/24, A∘f_s 13/24 after 30 steps; with L_sty's sign flipped 7/24.
const STYLE_GAIN: f32 = 5.0 / 24.0 - 1e-6;

#[test]
fn training_lowers_the_loss_and_teaches_style_names() {
    let (train_set, heldout) = (data("train"), data("heldout"));
    let (totals, report) = train(small_config(), &train_set, &heldout);
    let first = totals[..3].iter().sum::<f32>() / 3.0;
    let last = totals[totals.len() - 3..].iter().sum::<f32>() / 3.0;
    println!("total loss {first:.4} → {last:.4}\n{}", report.markdown());
    assert!(last <= 0.5 * first, "the loss fell from {first} to {last} only");
    let gain = report.style_encoder.style - report.base.style;
    assert!(gain >= STYLE_GAIN, "A∘f_s's held-out style accuracy {} vs E's {}", report.style_encoder.style, report.base.style);

    // The same run with L_sty's sign flipped cannot pass the style check: the test can fail.
    let flipped = TrainConfig { w_sty: -1.0, ..small_config() };
    let (_, report) = train(flipped, &train_set, &heldout);
    let gain = report.style_encoder.style - report.base.style;
    println!("sign-flipped L_sty:\n{}", report.markdown());
    assert!(gain < STYLE_GAIN, "a sign-flipped L_sty still gained {gain}");
}
