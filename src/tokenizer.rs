//! The CLIP BPE tokenizer, as Stable Diffusion 1.x pipelines use it.
//!
//! `tokenizer.json` (built offline by tests/fixtures/make_tokenizer.py from OpenAI's BPE vocabulary) does
//! the normalisation (NFC, whitespace runs to one space, lower-casing), the CLIP pre-tokenizer regex, the
//! byte-level BPE and the `<|startoftext|>` … `<|endoftext|>` wrapping. This file adds what SD pipelines
//! add: truncation to the model's positions (telling the caller what was dropped) and padding with
//! `<|endoftext|>`.

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// Positions of SD 1.x's text encoder: 75 prompt tokens between the two specials.
pub const MAX_POSITIONS: usize = 77;

/// A prompt turned into exactly `max_positions` ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPrompt {
    pub ids: Vec<u32>,
    /// How many prompt tokens did not fit and were dropped (0 when the prompt fit).
    pub dropped_tokens: usize,
    /// The text of the dropped tokens, so that a UI can show what was cut.
    pub dropped_text: String,
}

impl TokenizedPrompt {
    /// A one-line notice for the CLI / page, or None when nothing was dropped.
    pub fn truncation_notice(&self) -> Option<String> {
        (self.dropped_tokens > 0).then(|| {
            format!(
                "prompt too long: the last {} token(s) were dropped (\"{}\")",
                self.dropped_tokens,
                self.dropped_text.trim()
            )
        })
    }
}

pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl ClipTokenizer {
    /// Loads from the bytes of a `tokenizer.json`; `name` is the file name used in errors.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::file(name, "the file is empty, expected a tokenizer.json"));
        }
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| Error::file(name, format!("not a valid tokenizer.json: {e}")))?;
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| Error::file(name, format!("the vocabulary has no `{token}` token")))
        };
        let bos = id("<|startoftext|>")?;
        let eos = id("<|endoftext|>")?;
        Ok(Self { inner, bos, eos, pad: eos })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(path: &std::path::Path) -> Result<Self> {
        Self::from_bytes(&path.display().to_string(), &crate::files::read_bytes(path)?)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Tokenizes `prompt` into exactly `max_positions` ids: `<|startoftext|>`, at most `max_positions - 2`
    /// prompt tokens, `<|endoftext|>`, then `<|endoftext|>` padding. An empty prompt is valid (it is the
    /// unconditional prompt of classifier-free guidance).
    pub fn encode(&self, prompt: &str, max_positions: usize) -> Result<TokenizedPrompt> {
        if max_positions < 2 {
            return Err(Error::invalid("max_positions", format!("{max_positions} leaves no room for the start and end tokens")));
        }
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| Error::invalid("prompt", format!("the tokenizer failed: {e}")))?;
        let all = encoding.get_ids();
        // The post-processor wrapped the content in bos … eos.
        let content = match all {
            [first, middle @ .., last] if *first == self.bos && *last == self.eos => middle,
            _ => all,
        };
        let room = max_positions - 2;
        let kept = content.len().min(room);
        let dropped = &content[kept..];
        let dropped_text = if dropped.is_empty() {
            String::new()
        } else {
            self.inner.decode(dropped, true).unwrap_or_default().replace("</w>", " ")
        };
        let mut ids = Vec::with_capacity(max_positions);
        ids.push(self.bos);
        ids.extend_from_slice(&content[..kept]);
        ids.push(self.eos);
        ids.resize(max_positions, self.pad);
        Ok(TokenizedPrompt { ids, dropped_tokens: dropped.len(), dropped_text })
    }
}
