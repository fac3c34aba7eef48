//! `control-clip eval --base DIR|BUNDLE --clip DIR --encoders DIR --data DIR`: zero-shot category and style
//! accuracy of E, f_c and A∘f_s on a held-out labelled folder (the library's `train::eval`), as one JSON line
//! on stdout followed by a markdown table. `--encoders` is a `finetune` output folder (category_encoder/,
//! style_encoder/ as LoRA deltas over E or full CLIP text folders, adapter/).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use control_clip::control::{Adapter, EncoderSource};
use control_clip::models::ModelFolder;
use control_clip::models::clip::ClipTextModel;
use control_clip::models::nn::LoraTensors;
use control_clip::train::eval::evaluate;
use control_clip::train::losses::Frozen;
use control_clip::train::trainables::TunedText;
use control_clip::{Error, Result};

use crate::finetune::TrainingInputs;

#[derive(Args)]
pub struct EvalArgs {
    /// `--data` is the held-out labelled folder.
    #[command(flatten)]
    inputs: TrainingInputs,
    /// What `finetune` wrote: category_encoder/, style_encoder/ (LoRA deltas or full CLIP text folders) and
    /// adapter/.
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
    // LoRA deltas stay unmerged, as training ran them.
    let read = |name: &str| -> Result<TunedText> {
        let dir = args.encoders.join(name);
        Ok(match EncoderSource::read_dir(&dir)? {
            EncoderSource::Deltas(deltas) => TunedText::Lora(LoraTensors::from_deltas(&deltas, &device)),
            EncoderSource::Full(config, weights) => {
                let model = ClipTextModel::load(&config, &weights, &device)?;
                if model.config.hidden_size != loaded.base.config.hidden_size {
                    return Err(Error::file(dir.display().to_string(), format!("is {} wide, E is {}", model.config.hidden_size, loaded.base.config.hidden_size)));
                }
                TunedText::Full(model)
            }
        })
    };
    let category = read("category_encoder")?;
    let style = read("style_encoder")?;
    let adapter = Adapter::read_dir(&args.encoders.join("adapter"), &device)?;
    let frozen = Frozen { base: &loaded.base, projection: &loaded.clip.text, unet: None };
    let report = evaluate(&frozen, category.encoder(), style.encoder(), &adapter, &loaded.data).await?;
    println!("{}", report.json_line());
    println!();
    print!("{}", report.markdown());
    Ok(())
}
