//! Schedulers vs diffusers 0.42.1, on every fixture and both native backends: timesteps and sigmas
//! equal diffusers' (≤ 1e-6 relative), every step output within 1e-5 max abs error (zero terminal SNR
//! included). Plus refusal of config values we do not implement.

use std::path::PathBuf;

use crate::common::{backends, block_on, fixtures};
use control_clip::check::{check_scheduler, read_f64};
use control_clip::config::ConfigJson;
use control_clip::schedulers::{SchedulerConfig, SchedulerKind, build};
use control_clip::{Error, SafeTensors, init_device};

const TOLERANCE: f32 = 1e-5;
const SCHEDULE_REL_TOLERANCE: f64 = 1e-6;

fn fixture_dir(name: &str) -> PathBuf {
    fixtures().join("schedulers").join(name)
}

fn parity(name: &str) {
    let dir = fixture_dir(name);
    let config = ConfigJson::read(&dir.join("scheduler_config.json")).unwrap();
    let io = SafeTensors::read(&dir.join("io.safetensors")).unwrap();

    // The schedule, at full precision.
    let kind = SchedulerKind::from_config(&config).unwrap();
    let mut scheduler = build(kind, &SchedulerConfig::from_json(&config).unwrap()).unwrap();
    let (_, steps) = io.i64("num_inference_steps").unwrap();
    scheduler.set_timesteps(steps[0] as usize).unwrap();
    let mut vectors = vec![("timesteps", scheduler.timesteps().to_vec()), ("init_noise_sigma", vec![scheduler.init_noise_sigma()])];
    if io.contains("sigmas") {
        vectors.push(("sigmas", scheduler.sigmas().to_vec()));
    } else {
        assert!(scheduler.sigmas().is_empty(), "{name}: diffusers has no sigmas");
    }
    for (key, ours) in vectors {
        let (_, expected) = read_f64(&io, key).unwrap();
        assert_eq!(ours.len(), expected.len(), "{name}: {key} count");
        let worst = ours.iter().zip(&expected).map(|(a, e)| (a - e).abs() / e.abs().max(1e-30)).fold(0.0, f64::max);
        println!("{name} {key}: max_rel_err {worst:.3e}");
        assert!(worst <= SCHEDULE_REL_TOLERANCE, "{name}: {key} {ours:?} vs diffusers {expected:?}");
    }

    for backend in backends() {
        let report = block_on(async {
            let device = init_device(backend).await.unwrap();
            check_scheduler(&io, &config, &device, TOLERANCE).await.unwrap()
        });
        let steps = report.outputs.iter().filter(|o| o.name.starts_with("prev_sample_"));
        let worst = steps.clone().map(|o| o.max_abs_err).fold(0.0, f32::max);
        println!("{name} [{backend}]: {} steps, max_abs_err {worst:.3e}, max_rel_err {:.3e}", steps.count(), report.max_rel_err);
        for o in report.outputs.iter().filter(|o| o.max_abs_err > 0.0) {
            println!("    {}: max_abs_err {:.3e} max_rel_err {:.3e}", o.name, o.max_abs_err, o.max_rel_err);
        }
        assert!(report.pass, "{name} on {backend}: {}", report.json_line());
    }
}

#[test]
fn ddim_leading_epsilon_sd15() {
    parity("ddim-leading-eps-20");
}

#[test]
fn ddim_trailing_v_prediction() {
    parity("ddim-trailing-vpred-10");
}

#[test]
fn ddim_one_step_at_999() {
    parity("ddim-trailing-1step");
}

#[test]
fn ddim_linspace_with_clip_sample() {
    parity("ddim-linspace-clip-8");
}

#[test]
fn euler_ancestral_leading_epsilon() {
    parity("euler-a-leading-eps-15");
}

#[test]
fn euler_ancestral_linspace_v_prediction() {
    parity("euler-a-linspace-vpred-6");
}

#[test]
fn dpmpp_2m_karras() {
    parity("dpmpp-2m-karras-20");
}

#[test]
fn dpmpp_2m_karras_sigma_min_second_order_to_the_end() {
    parity("dpmpp-2m-karras-linspace-sigma-min-16");
}

#[test]
fn dpmpp_2m_leading() {
    parity("dpmpp-2m-leading-20");
}

#[test]
fn dpmpp_2m_trailing_v_prediction_sigma_min() {
    parity("dpmpp-2m-trailing-vpred-sigma-min-8");
}

#[test]
fn dpmpp_2m_linspace_linear_betas() {
    parity("dpmpp-2m-linspace-linear-12");
}

#[test]
fn lcm_four_steps() {
    parity("lcm-4");
}

#[test]
fn lcm_one_step_at_999() {
    parity("lcm-1");
}

// Zero terminal SNR (`rescale_betas_zero_snr`). "default-model": the default model's DDPM training config
// (scaled_linear 0.00085–0.012, v_prediction, trailing) loaded by each class with from_config.

#[test]
fn ddim_zero_snr_default_model_from_timestep_999() {
    parity("ddim-zsnr-default-model-6");
}

#[test]
fn ddim_zero_snr_leading_epsilon() {
    parity("ddim-zsnr-leading-eps-8");
}

#[test]
fn euler_ancestral_zero_snr_default_model_sigma_4096() {
    parity("euler-a-zsnr-default-model-5");
}

#[test]
fn dpmpp_2m_zero_snr_default_model() {
    parity("dpmpp-2m-zsnr-default-model-8");
}

#[test]
fn dpmpp_2m_zero_snr_trailing_epsilon() {
    parity("dpmpp-2m-zsnr-trailing-eps-6");
}

#[test]
fn dpmpp_2m_zero_snr_karras_v_prediction() {
    parity("dpmpp-2m-zsnr-karras-vpred-8");
}

#[test]
fn lcm_zero_snr_default_model() {
    parity("lcm-zsnr-default-model-4");
}

/// The field an error names, when it is a config error.
fn config_field(result: control_clip::Result<impl Sized>) -> String {
    match result.err().expect("the config should be refused") {
        Error::Config { field, .. } => field,
        other => panic!("expected a config error, got {other}"),
    }
}

fn build_from(kind: SchedulerKind, json: &str) -> control_clip::Result<()> {
    let config = SchedulerConfig::parse("s/scheduler_config.json", json)?;
    build(kind, &config).map(drop)
}

#[test]
fn unsupported_values_are_refused_by_name() {
    use SchedulerKind::*;
    let cases = [
        (Ddim, r#"{"thresholding": true}"#, "thresholding"),
        (Ddim, r#"{"rescale_betas_zero_snr": "yes"}"#, "rescale_betas_zero_snr"),
        // Rescaling needs a schedule whose sqrt(alphas_cumprod) falls: here it stays flat after t = 0.
        (Ddim, r#"{"rescale_betas_zero_snr": true, "num_train_timesteps": 2, "beta_end": 0.0}"#, "rescale_betas_zero_snr"),
        (Ddim, r#"{"trained_betas": [0.1, 0.2]}"#, "trained_betas"),
        (Ddim, r#"{"beta_schedule": "squaredcos_cap_v2"}"#, "beta_schedule"),
        (Ddim, r#"{"prediction_type": "sample"}"#, "prediction_type"),
        (Ddim, r#"{"timestep_spacing": "karras"}"#, "timestep_spacing"),
        (Ddim, r#"{"steps_offset": "one"}"#, "steps_offset"),
        (Ddim, r#"{"clip_sample": "yes"}"#, "clip_sample"),
        (EulerAncestral, r#"{"prediction_type": "sample"}"#, "prediction_type"),
        (EulerAncestral, r#"{"beta_schedule": "exp"}"#, "beta_schedule"),
        (DpmPp2m, r#"{"algorithm_type": "sde-dpmsolver++"}"#, "algorithm_type"),
        (DpmPp2m, r#"{"solver_type": "heun"}"#, "solver_type"),
        (DpmPp2m, r#"{"solver_order": 3}"#, "solver_order"),
        (DpmPp2m, r#"{"use_exponential_sigmas": true}"#, "use_exponential_sigmas"),
        (DpmPp2m, r#"{"use_lu_lambdas": true}"#, "use_lu_lambdas"),
        (DpmPp2m, r#"{"final_sigmas_type": "denoise_to_zero"}"#, "final_sigmas_type"),
        (DpmPp2m, r#"{"lambda_min_clipped": -5.1}"#, "lambda_min_clipped"),
        (DpmPp2m, r#"{"variance_type": "learned_range"}"#, "variance_type"),
        (DpmPp2m, r#"{"variance_type": "learned"}"#, "variance_type"),
        (DpmPp2m, r#"{"thresholding": true}"#, "thresholding"),
        (Lcm, r#"{"thresholding": true}"#, "thresholding"),
        (Lcm, r#"{"original_inference_steps": 0}"#, "original_inference_steps"),
    ];
    for (kind, json, field) in cases {
        let got = config_field(build_from(kind, json));
        assert_eq!(got, field, "{kind} with {json}");
        let message = build_from(kind, json).err().unwrap().to_string();
        assert!(message.contains("s/scheduler_config.json") && message.contains(field), "{message}");
    }
}

#[test]
fn epsilon_at_a_zero_snr_terminal_timestep_is_refused_by_name() {
    // DDIM and LCM keep alphas_cumprod[999] = 0, where an epsilon model's clean-sample estimate divides by
    // 0 (diffusers returns inf / NaN); Euler and DPM-Solver (sigma 4096 there) and leading spacing are fine.
    let zero_snr = r#"{"rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}"#;
    let config = SchedulerConfig::parse("s/scheduler_config.json", zero_snr).unwrap();
    for kind in [SchedulerKind::Ddim, SchedulerKind::Lcm] {
        let mut scheduler = build(kind, &config).unwrap();
        let error = scheduler.set_timesteps(4).err().expect("epsilon at timestep 999 should be refused");
        assert!(matches!(&error, Error::Config { field, .. } if field == "prediction_type"), "{kind}: {error}");
        assert!(error.to_string().contains("s/scheduler_config.json"), "{error}");
    }
    for kind in [SchedulerKind::EulerAncestral, SchedulerKind::DpmPp2m] {
        build(kind, &config).unwrap().set_timesteps(4).unwrap();
    }
    let leading = SchedulerConfig::parse("s.json", r#"{"rescale_betas_zero_snr": true, "steps_offset": 1}"#).unwrap();
    build(SchedulerKind::Ddim, &leading).unwrap().set_timesteps(4).unwrap();
    let v = SchedulerConfig::parse("s.json", r#"{"rescale_betas_zero_snr": true, "prediction_type": "v_prediction"}"#).unwrap();
    build(SchedulerKind::Lcm, &v).unwrap().set_timesteps(4).unwrap();
}

#[test]
fn fields_a_class_does_not_read_are_ignored_as_in_diffusers() {
    // Euler ancestral has no thresholding / clip_sample; LCM ignores timestep_spacing.
    build_from(SchedulerKind::EulerAncestral, r#"{"thresholding": true, "clip_sample": true, "use_karras_sigmas": true}"#).unwrap();
    build_from(SchedulerKind::Lcm, r#"{"timestep_spacing": "karras"}"#).unwrap();
    // SD 1.5's own scheduler_config.json (PNDM) drives every scheduler here.
    let sd15 = r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": false, "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
        "steps_offset": 1, "trained_betas": null}"#;
    for kind in SchedulerKind::ALL {
        build_from(kind, sd15).unwrap();
    }
    // A DDPM training config carries `variance_type: fixed_small`, which DPM-Solver ignores.
    build_from(SchedulerKind::DpmPp2m, r#"{"_class_name": "DDPMScheduler", "variance_type": "fixed_small"}"#).unwrap();
}

#[test]
fn python_infinity_in_a_saved_config_parses() {
    let config = ConfigJson::parse("s.json", r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity}"#).unwrap();
    assert_eq!(SchedulerKind::from_config(&config).unwrap(), SchedulerKind::DpmPp2m);
    assert_eq!(SchedulerConfig::from_json(&config).unwrap().lambda_min_clipped, Some(f64::NEG_INFINITY));
}

#[test]
fn kinds_parse_from_cli_and_class_names() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.name().parse::<SchedulerKind>().unwrap(), kind);
        assert_eq!(kind.class_name().parse::<SchedulerKind>().unwrap(), kind);
    }
    assert!(matches!("euler".parse::<SchedulerKind>(), Err(Error::Invalid { .. })));
    let config = ConfigJson::parse("s.json", r#"{"_class_name": "PNDMScheduler"}"#).unwrap();
    assert_eq!(config_field(SchedulerKind::from_config(&config)), "_class_name");
}

#[test]
fn bad_step_counts_and_missing_noise_are_errors() {
    let config = SchedulerConfig::parse("s.json", "{}").unwrap();
    let mut lcm = build(SchedulerKind::Lcm, &config).unwrap();
    assert!(matches!(lcm.set_timesteps(51), Err(Error::Invalid { .. })), "more steps than original_inference_steps");
    let mut ddim = build(SchedulerKind::Ddim, &config).unwrap();
    assert!(matches!(ddim.set_timesteps(0), Err(Error::Invalid { .. })));
    assert!(matches!(ddim.set_timesteps(1001), Err(Error::Invalid { .. })));

    let device = burn::tensor::Device::flex();
    let zeros = || burn::tensor::Tensor::<4>::zeros([1, 4, 2, 2], &device);
    lcm.set_timesteps(2).unwrap();
    assert!(matches!(lcm.step(zeros(), 0, zeros(), None), Err(Error::Invalid { .. })), "LCM needs noise before the last step");
    lcm.step(zeros(), 1, zeros(), None).unwrap();
    assert!(matches!(lcm.step(zeros(), 2, zeros(), None), Err(Error::Invalid { .. })), "step past the end");
    let mut dpm = build(SchedulerKind::DpmPp2m, &config).unwrap();
    dpm.set_timesteps(4).unwrap();
    dpm.step(zeros(), 0, zeros(), None).unwrap();
    assert!(matches!(dpm.step(zeros(), 2, zeros(), None), Err(Error::Invalid { .. })), "DPM-Solver++ steps in order");
}
