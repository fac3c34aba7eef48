//! The native command-line tool. One file per subcommand; this file only parses and dispatches.

mod bench;
mod bench_attention;
mod bench_finetune;
mod bundle;
mod check;
mod eval;
mod finetune;
mod generate;
mod soak;
mod tokenize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "control-clip", version, about = "Control-CLIP text-to-image generation, natively and for the web")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a model folder against reference outputs (exit 0 pass, 1 fail, 2 bad input).
    Check(check::CheckArgs),
    /// Time a UNet step and a decoder pass (folders made by tests/bench/bench.py).
    Bench(bench::BenchArgs),
    /// Time the fused decoupled cross-attention kernel against its tensor-op form (SD 1.5 layer sizes).
    BenchAttention(bench_attention::BenchAttentionArgs),
    /// Time one Control-CLIP training step on a finetune-step io file (tests/bench/bench_finetune.py).
    BenchFinetune(bench_finetune::BenchFinetuneArgs),
    /// Build a bundle folder (manifest + tokenizer + weights) from model folders.
    Bundle(bundle::BundleArgs),
    /// Zero-shot category / style accuracy of E, f_c and A∘f_s on a held-out labelled folder.
    Eval(eval::EvalArgs),
    /// Fine-tune Control-CLIP's f_c, f_s (LoRA over E) and adapter from labelled pictures.
    Finetune(finetune::FinetuneArgs),
    /// Generate an image from a prompt and write it as a PNG.
    ///
    /// Size, steps, guidance and the weights come from their flags when given, else from the bundle's
    /// recommended settings (its manifest's `defaults`, as the page uses them), else, for separate
    /// component folders or a bundle that does not say, from SD's usual 512×512, 20 steps, guidance 7.5,
    /// category weight 1 and style weight 0. With --batch a line's own weights win over the flags. A
    /// line on stderr says which settings were used and where each came from.
    Generate(generate::GenerateArgs),
    /// Many generations in one process: memory bounded, no slowdown, repeated seeds identical.
    Soak(soak::SoakArgs),
    /// Show the token ids of a prompt (and what a too-long prompt loses).
    Tokenize(tokenize::TokenizeArgs),
}

fn main() -> ExitCode {
    // Quiet wgpu's warning about XDG_RUNTIME_DIR on headless machines.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: single-threaded at this point, before any runtime starts.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchAttention(args) => bench_attention::run(args),
        Command::BenchFinetune(args) => bench_finetune::run(args),
        Command::Bundle(args) => bundle::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Tokenize(args) => tokenize::run(args),
    }
}
