//! `control-clip check <component> --model DIR --io FILE.safetensors`: prints one JSON line
//! `{"component", "max_abs_err", "max_rel_err", "tolerance", "pass"}`; exit 0 pass, 1 fail, 2 bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use control_clip::check::{check_control_identity, check_control_unet, check_cross_attention, check_text_encoder, check_tiny_decoder, check_unet, check_vae_decoder};
use control_clip::models::unet::transformer::Attention;
use control_clip::models::taesd::TinyDecoder;
use control_clip::schedulers::check::check_scheduler;
use control_clip::schedulers::read_config_json;
use control_clip::models::vae::VaeDecoder;
use control_clip::models::unet::UNet2DConditionModel;
use control_clip::{BackendKind, ClipTextModel, SafeTensors, init_device};

#[derive(Clone, Copy, ValueEnum)]
pub enum Component {
    /// A transformers CLIPTextModel / CLIPTextModelWithProjection folder.
    TextEncoder,
    /// A diffusers UNet2DConditionModel folder.
    Unet,
    /// A diffusers AutoencoderKL folder (its decoder is checked).
    VaeDecoder,
    /// A diffusers AutoencoderTiny (TAESD) folder (its decoder is checked).
    TinyDecoder,
    /// A diffusers scheduler: --model is the folder holding scheduler_config.json.
    Scheduler,
    /// A UNet2DConditionModel folder run with Control-CLIP's decoupled cross-attention.
    ControlUnet,
    /// The identity property on a UNet folder and its `unet` io file: f_c = E with weights (1, 0) must
    /// give the plain UNet's output.
    ControlIdentity,
    /// One decoupled cross-attention layer: config.json (query_dim, cross_attention_dim, heads, dim_head)
    /// + weights with diffusers' `Attention` keys.
    CrossAttention,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Backend {
    Wgpu,
    Cpu,
}

#[derive(Args)]
pub struct CheckArgs {
    /// What the model folder holds.
    component: Component,
    /// Model folder: config.json + model.safetensors, as transformers / diffusers save it.
    #[arg(long)]
    model: PathBuf,
    /// Reference inputs and outputs (safetensors; names in README.md).
    #[arg(long)]
    io: PathBuf,
    #[arg(long, value_enum, default_value = "wgpu")]
    backend: Backend,
    /// Largest allowed absolute error on any output element.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
}

pub fn run(args: CheckArgs) -> ExitCode {
    let backend = match args.backend {
        Backend::Wgpu => BackendKind::Wgpu,
        Backend::Cpu => BackendKind::Cpu,
    };
    if !(args.tolerance >= 0.0) {
        eprintln!("error: --tolerance must be a non-negative number");
        return ExitCode::from(2);
    }
    let result = pollster::block_on(async {
        let device = init_device(backend).await?;
        let io = SafeTensors::read(&args.io)?;
        match args.component {
            Component::TextEncoder => {
                let model = ClipTextModel::read_dir(&args.model, &device)?;
                check_text_encoder(&model, &io, args.tolerance).await
            }
            Component::Unet => {
                let model = UNet2DConditionModel::read_dir(&args.model, &device)?;
                check_unet(&model, &io, args.tolerance).await
            }
            Component::VaeDecoder => {
                let model = VaeDecoder::read_dir(&args.model, &device)?;
                check_vae_decoder(&model, &io, args.tolerance).await
            }
            Component::TinyDecoder => {
                let model = TinyDecoder::read_dir(&args.model, &device)?;
                check_tiny_decoder(&model, &io, args.tolerance).await
            }
            Component::Scheduler => {
                let config = read_config_json(&args.model.join("scheduler_config.json"))?;
                check_scheduler(&io, &config, &device, args.tolerance).await
            }
            Component::ControlUnet => {
                let model = UNet2DConditionModel::read_dir(&args.model, &device)?;
                check_control_unet(&model, &io, args.tolerance).await
            }
            Component::ControlIdentity => {
                let model = UNet2DConditionModel::read_dir(&args.model, &device)?;
                check_control_identity(&model, &io, args.tolerance).await
            }
            Component::CrossAttention => {
                let layer = Attention::read_dir(&args.model, &device)?;
                check_cross_attention(&layer, &io, args.tolerance).await
            }
        }
    });
    match result {
        Ok(report) => {
            println!("{}", report.json_line());
            if report.pass { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
