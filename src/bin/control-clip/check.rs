//! `control-clip check <component> --model DIR --io FILE.safetensors`: prints one JSON line
//! `{"component", "max_abs_err", "max_rel_err", "tolerance", "pass", "outputs"}`; exit 0 pass, 1 fail,
//! 2 bad input. The components and how each is checked are the library's (`control_clip::check`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use clap::builder::PossibleValuesParser;
use control_clip::check::{self, Component};
use control_clip::{BackendKind, SafeTensors, init_device};

#[derive(Args)]
pub struct CheckArgs {
    /// What the model folder holds: text-encoder, unet, vae-decoder, tiny-decoder, scheduler (a folder with
    /// scheduler_config.json), control-unet, control-identity, cross-attention, vision-encoder (a CLIPVisionModel or
    /// CLIPModel folder), finetune-step (E as a CLIPTextModelWithProjection folder) (README.md, "Checking a model").
    #[arg(value_parser = PossibleValuesParser::new(Component::ALL.map(Component::name)))]
    component: String,
    /// Model folder: config.json + model.safetensors, as transformers / diffusers save it.
    #[arg(long)]
    model: PathBuf,
    /// Reference inputs and outputs (safetensors; names in README.md).
    #[arg(long)]
    io: PathBuf,
    #[arg(long, value_parser = ["wgpu", "cpu"], default_value = "wgpu")]
    backend: String,
    /// Largest allowed absolute error on any output element.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
}

pub fn run(args: CheckArgs) -> ExitCode {
    let result = pollster::block_on(async {
        let component: Component = args.component.parse()?;
        let backend: BackendKind = args.backend.parse()?;
        let device = init_device(backend).await?;
        let io = SafeTensors::read(&args.io)?;
        check::run_dir(component, &args.model, &io, &device, args.tolerance).await
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
