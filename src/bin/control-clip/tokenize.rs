//! `control-clip tokenize --tokenizer tokenizer.json --prompt TEXT`: prints the 77 ids as one JSON line;
//! a truncated prompt is reported on stderr with what was dropped.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use control_clip::{ClipTokenizer, MAX_POSITIONS};

#[derive(Args)]
pub struct TokenizeArgs {
    /// A CLIP tokenizer.json (the one in a bundle, or tests/fixtures/tokenizer.json).
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    prompt: String,
}

pub fn run(args: TokenizeArgs) -> ExitCode {
    let result = ClipTokenizer::read(&args.tokenizer).and_then(|t| t.encode(&args.prompt, MAX_POSITIONS));
    match result {
        Ok(t) => {
            if let Some(notice) = t.truncation_notice() {
                eprintln!("warning: {notice}");
            }
            println!("{}", serde_json::json!({"ids": t.ids, "dropped_tokens": t.dropped_tokens}));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
