//! Checking a scheduler against diffusers' outputs: the logic behind `control-clip check scheduler`.
//! The io format is in docs/schedulers.md.

use burn::tensor::{Device, Tensor, TensorData};

use super::{CheckReport, OutputError, compare};
use crate::schedulers::{SchedulerConfig, SchedulerKind, build};
use crate::config::ConfigJson;
use crate::device::read_f32;
use crate::error::{Error, Result};
use crate::weights::{DType, SafeTensors};

/// Builds the scheduler `config` names (`_class_name`), runs `set_timesteps` and every step of `io` on
/// `device`, and compares the timesteps, sigmas, initial noise scale, scaled model inputs and step
/// outputs with diffusers'. Each step starts from the reference's `sample_<i>`, so errors do not compound.
pub async fn check_scheduler(io: &SafeTensors, config: &ConfigJson, device: &Device, tolerance: f32) -> Result<CheckReport> {
    let kind = SchedulerKind::from_config(config)?;
    let mut scheduler = build(kind, &SchedulerConfig::from_json(config)?)?;
    let (_, steps) = io.i64("num_inference_steps")?;
    let steps = match steps.as_slice() {
        [n] if *n > 0 => *n as usize,
        _ => return Err(Error::tensor(io.name(), "num_inference_steps", format!("expected one positive integer, found {steps:?}"))),
    };
    scheduler.set_timesteps(steps)?;

    let mut outputs = vec![compare_schedule(io, "timesteps", scheduler.timesteps())?];
    if io.contains("sigmas") {
        outputs.push(compare_schedule(io, "sigmas", scheduler.sigmas())?);
    }
    if io.contains("init_noise_sigma") {
        outputs.push(compare_schedule(io, "init_noise_sigma", &[scheduler.init_noise_sigma()])?);
    }
    let count = scheduler.timesteps().len();
    for i in 0..count {
        let sample = tensor(io, &format!("sample_{i}"), device)?;
        let model_output = tensor(io, &format!("model_output_{i}"), device)?;
        let noise_key = format!("noise_{i}");
        let noise = if io.contains(&noise_key) {
            Some(tensor(io, &noise_key, device)?)
        } else if scheduler.needs_noise() && i + 1 < count {
            return Err(Error::tensor(io.name(), noise_key, format!("missing: {kind} draws noise on every step but the last")));
        } else {
            None
        };
        let input_key = format!("model_input_{i}");
        if io.contains(&input_key) {
            let (shape, values) = read_f32(scheduler.scale_model_input(sample.clone(), i)).await?;
            outputs.push(compare(io, &input_key, &shape, &values)?);
        }
        let prev_sample = scheduler.step(model_output, i, sample, noise)?.prev_sample;
        let (shape, values) = read_f32(prev_sample).await?;
        outputs.push(compare(io, &format!("prev_sample_{i}"), &shape, &values)?);
    }
    Ok(CheckReport::new("scheduler", outputs, tolerance))
}

/// A float tensor of `io` at full precision (F64 kept as f64).
pub fn read_f64(io: &SafeTensors, key: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    if !io.contains(key) {
        return Err(Error::tensor(io.name(), key, "missing from the file"));
    }
    let f64_tensor = io.raw_tensors().into_iter().find(|t| t.name == key && t.dtype == DType::F64);
    match f64_tensor {
        Some(t) => Ok((t.shape, t.bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())),
        None => io.f32(key).map(|(shape, values)| (shape, values.into_iter().map(f64::from).collect())),
    }
}

/// Compares a host-side vector (timesteps, sigmas) in f64.
fn compare_schedule(io: &SafeTensors, key: &str, actual: &[f64]) -> Result<OutputError> {
    let (_, expected) = read_f64(io, key)?;
    if expected.len() != actual.len() {
        return Err(Error::tensor(io.name(), key, format!("reference has {} values, the scheduler produced {}", expected.len(), actual.len())));
    }
    let max_abs_err = actual.iter().zip(&expected).map(|(a, e)| (a - e).abs()).fold(0.0, f64::max);
    let scale = expected.iter().map(|e| e.abs()).fold(0.0, f64::max);
    Ok(OutputError { name: key.into(), max_abs_err: max_abs_err as f32, max_rel_err: (max_abs_err / scale.max(f64::MIN_POSITIVE)) as f32, limit: None })
}

fn tensor(io: &SafeTensors, key: &str, device: &Device) -> Result<Tensor<4>> {
    let (shape, values) = io.f32(key)?;
    let dims: [usize; 4] =
        shape.clone().try_into().map_err(|_| Error::tensor(io.name(), key, format!("expected a rank-4 tensor, found shape {shape:?}")))?;
    Ok(Tensor::from_data(TensorData::new(values, dims), device))
}
