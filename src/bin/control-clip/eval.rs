//! `control-clip eval --base DIR|BUNDLE --clip DIR --encoders DIR --data DIR`: zero-shot category and style
//! accuracy of E, f_c and A∘f_s on a held-out labelled folder (the library's `train::eval`), as one JSON line
//! on stdout followed by a markdown table. `--encoders` is a `finetune` output folder (category_encoder/,
//! style_encoder/ as LoRA deltas over E, adapter/).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use control_clip::control::Adapter;
use control_clip::models::ModelFolder;
use control_clip::models::nn::LoraTensors;
use control_clip::train::eval::evaluate;
use control_clip::train::load::load;
use control_clip::train::losses::Frozen;
use control_clip::weights::LowRankDeltas;
use control_clip::{BackendKind, Result, init_device};

#[derive(Args)]
pub struct EvalArgs {
    /// The generator's text encoder E: a bundle folder, a diffusers pipeline folder or a CLIP text model folder.
    #[arg(long)]
    base: PathBuf,
    /// The CLIP model (a transformers CLIPModel folder with preprocessor_config.json).
    #[arg(long)]
    clip: PathBuf,
    /// What `finetune` wrote: category_encoder/, style_encoder/ (LoRA deltas) and adapter/.
    #[arg(long)]
    encoders: PathBuf,
    /// Held-out labelled folder: pictures, labels.jsonl, domain.json.
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// τ for the logits (default: the CLIP model's exp(logit_scale)); accuracy does not depend on it.
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long, value_parser = ["wgpu", "cpu"], default_value = "cpu")]
    backend: String,
}

pub fn run(args: EvalArgs) -> ExitCode {
    match pollster::block_on(eval(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn eval(args: EvalArgs) -> Result<()> {
    let backend: BackendKind = args.backend.parse()?;
    let device = init_device(backend).await?;
    let loaded = load(&args.base, &args.clip, &args.data, args.tokenizer.as_deref(), args.temperature, &device).await?;
    let deltas = |name: &str| -> Result<LoraTensors> {
        let d = LowRankDeltas::read_dir(&args.encoders.join(name))?;
        d.to_tensors(&device)
    };
    let category = deltas("category_encoder")?;
    let style = deltas("style_encoder")?;
    let adapter = Adapter::read_dir(&args.encoders.join("adapter"), &device)?;
    let frozen = Frozen { base: &loaded.base, projection: &loaded.clip.text };
    let report = evaluate(&frozen, &category, &style, &adapter, &loaded.data).await?;
    println!("{}", report.json_line());
    println!();
    print!("{}", report.markdown());
    Ok(())
}
