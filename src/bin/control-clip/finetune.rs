//! `control-clip finetune --base DIR|BUNDLE --clip DIR --data DIR [--config train.json] --out DIR`:
//! Control-CLIP fine-tuning of f_c, f_s (LoRA over E) and the adapter A (the library's `train` module).
//! Writes OUT/category_encoder, OUT/style_encoder (PEFT LoRA folders), OUT/adapter, OUT/log.jsonl (every
//! step's loss terms) and OUT/checkpoint.safetensors every `checkpoint_every` steps; `--resume` continues
//! from that checkpoint.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use control_clip::files::{create_dir, open_to_append, read_bytes, read_text, write_atomic};
use control_clip::train::TrainConfig;
use control_clip::train::finetune::Trainer;
use control_clip::train::load::{Loaded, load, load_denoiser};
use burn::tensor::Device;
use control_clip::{BackendKind, Error, Result, SafeTensors, init_device};

/// What fine-tuning and evaluation read: E, the CLIP model, a labelled folder.
#[derive(Args)]
pub struct TrainingInputs {
    /// The generator's text encoder E: a bundle folder, a diffusers pipeline folder or a CLIP text model folder.
    #[arg(long)]
    pub base: PathBuf,
    /// The CLIP model (a transformers CLIPModel folder with preprocessor_config.json).
    #[arg(long)]
    pub clip: PathBuf,
    /// Labelled folder: pictures, labels.jsonl, domain.json (docs/finetune.md).
    #[arg(long)]
    pub data: PathBuf,
    /// tokenizer.json (default: the bundle's, the pipeline's tokenizer/, or the CLIP folder's).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, value_parser = ["wgpu", "cpu"], default_value = "cpu")]
    pub backend: String,
}

impl TrainingInputs {
    /// Starts the backend and reads everything (`temperature`: τ, or None for the CLIP model's).
    pub async fn load(&self, temperature: Option<f32>) -> Result<(Loaded, Device)> {
        let backend: BackendKind = self.backend.parse()?;
        let device = init_device(backend).await?;
        let loaded = load(&self.base, &self.clip, &self.data, self.tokenizer.as_deref(), temperature, &device).await?;
        Ok((loaded, device))
    }
}

#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    inputs: TrainingInputs,
    /// Training config (JSON; missing fields take DESIGN §2's defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Continue from OUT/checkpoint.safetensors.
    #[arg(long)]
    resume: bool,
}

pub fn run(args: FinetuneArgs) -> ExitCode {
    match pollster::block_on(finetune(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e}");
            ExitCode::from(2)
        }
    }
}

async fn finetune(args: FinetuneArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(path) => TrainConfig::parse(&path.display().to_string(), &read_text(path)?)?,
        None => TrainConfig::default(),
    };
    let (mut loaded, device) = args.inputs.load(cfg.temperature).await?;
    let denoiser = match cfg.w_den > 0.0 {
        true => Some(load_denoiser(&args.inputs.base, &args.inputs.data, &mut loaded, &device).await?),
        false => None,
    };
    create_dir(&args.out)?;
    let checkpoint_path = args.out.join("checkpoint.safetensors");
    let log_path = args.out.join("log.jsonl");
    let mut trainer = Trainer::new(cfg.clone(), &loaded.base, &loaded.clip.text, loaded.data.clone()).await?;
    if let Some(denoiser) = &denoiser {
        trainer = trainer.with_denoiser(denoiser)?;
    }
    if args.resume {
        trainer.resume(&SafeTensors::read(&checkpoint_path)?)?;
        eprintln!("resumed at step {}", trainer.step);
    } else if log_path.exists() {
        std::fs::remove_file(&log_path).map_err(|e| Error::file(log_path.display().to_string(), format!("cannot start a new log: {e}")))?;
    }
    // The log keeps exactly the steps the weights went through: a resumed run drops lines past the checkpoint.
    let kept: String = match std::fs::symlink_metadata(&log_path) {
        Ok(_) => String::from_utf8_lossy(&read_bytes(&log_path)?).lines().take(trainer.step).map(|l| format!("{l}\n")).collect(),
        Err(_) => String::new(),
    };
    write_atomic(&log_path, kept.as_bytes())?;
    let mut log = open_to_append(&log_path)?;
    let started = std::time::Instant::now();
    let first = trainer.step;
    while trainer.step < cfg.steps {
        let line = trainer.train_step().await?;
        writeln!(log, "{}", line.json_line()).map_err(|e| Error::file(log_path.display().to_string(), e.to_string()))?;
        let per_step = started.elapsed().as_secs_f64() / (trainer.step - first) as f64;
        let l = line.losses;
        eprint!(
            "\rstep {}/{}  total {:.4}  cat {:.3} sty {:.3} dec {:.3} trip {:.3} keep {:.4}/{:.4} den {:.4}  {:.2} s/step   ",
            trainer.step, cfg.steps, l[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6], per_step
        );
        if trainer.step % cfg.checkpoint_every == 0 || trainer.step == cfg.steps {
            write_atomic(&checkpoint_path, &trainer.checkpoint())?;
        }
    }
    eprintln!();
    for (path, bytes) in trainer.outputs() {
        let path = args.out.join(path);
        create_dir(path.parent().expect("a folder"))?;
        write_atomic(&path, &bytes)?;
    }
    eprintln!("wrote {} (category_encoder, style_encoder, adapter, log.jsonl)", args.out.display());
    Ok(())
}
