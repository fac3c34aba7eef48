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
use control_clip::train::losses::Frozen;
use control_clip::weights::LowRankDeltas;
use control_clip::Result;

use crate::finetune::TrainingInputs;

#[derive(Args)]
pub struct EvalArgs {
    /// `--data` is the held-out labelled folder.
    #[command(flatten)]
    inputs: TrainingInputs,
    /// What `finetune` wrote: category_encoder/, style_encoder/ (LoRA deltas) and adapter/.
    #[arg(long)]
    encoders: PathBuf,
    /// τ for the logits (default: the CLIP model's exp(logit_scale)); accuracy does not depend on it.
    #[arg(long)]
    temperature: Option<f32>,
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
    let (loaded, device) = args.inputs.load(args.temperature).await?;
    let deltas = |name: &str| -> Result<LoraTensors> {
        Ok(LoraTensors::from_deltas(&LowRankDeltas::read_dir(&args.encoders.join(name))?, &device))
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
