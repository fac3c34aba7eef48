//! The CLIP BPE tokenizer, as Stable Diffusion 1.x pipelines use it.
//!
//! `tokenizer.json` (built offline by tests/fixtures/make_tokenizer.py from OpenAI's BPE vocabulary, or by
//! [`tokenizer_json_from_vocab`] from a diffusers pipeline's `tokenizer/vocab.json` + `merges.txt`) does
//! the normalisation (NFC, whitespace runs to one space, lower-casing), the CLIP pre-tokenizer regex, the
//! byte-level BPE and the `<|startoftext|>` … `<|endoftext|>` wrapping. This file adds what SD pipelines
//! add: truncation to the model's positions (telling the caller what was dropped) and padding (with
//! `<|endoftext|>`, or the tokenizer.json's own `padding.pad_id` when it names one, as SD 2.x's `!`).

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
    /// A one-line notice for the CLI / page, or None when nothing was dropped. Control characters of the
    /// prompt are shown escaped (`\u{1b}`), never written raw to a terminal.
    pub fn truncation_notice(&self) -> Option<String> {
        (self.dropped_tokens > 0).then(|| {
            let shown: String = self.dropped_text.trim().chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect();
            format!("prompt too long: the last {} token(s) were dropped (\"{shown}\")", self.dropped_tokens)
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
        let pad = inner.get_padding().map_or(eos, |p| p.pad_id);
        Ok(Self { inner, bos, eos, pad })
    }

    /// The largest token id this tokenizer can produce (its vocabulary, added tokens and padding).
    pub fn largest_id(&self) -> u32 {
        let vocab = self.inner.get_vocab(true).into_values().max().unwrap_or(0);
        vocab.max(self.bos).max(self.eos).max(self.pad)
    }

    /// Refuses a tokenizer whose ids do not all fit a text encoder of `vocab_size` tokens, naming the
    /// tokenizer (`name`) and the encoder's config (`config`): otherwise the first prompt that uses such a
    /// token fails mid-generation with a bare id.
    pub fn check_fits(&self, name: &str, vocab_size: usize, config: &str) -> Result<()> {
        let largest = self.largest_id();
        if largest as usize >= vocab_size {
            return Err(Error::file(name, format!("gives token ids up to {largest}, but the text encoder ({config}) has a vocabulary of {vocab_size} (vocab_size): they do not belong together")));
        }
        Ok(())
    }

    /// Builds the tokenizer from a `vocab.json` + `merges.txt` pair ([`tokenizer_json_from_vocab`]).
    pub fn from_vocab(vocab: (&str, &[u8]), merges: (&str, &[u8]), special: &SpecialTokens) -> Result<Self> {
        let json = tokenizer_json_from_vocab(vocab, merges, special)?;
        Self::from_bytes(&format!("{} + {}", vocab.0, merges.0), &json)
    }

    /// Reads a transformers tokenizer folder: its `tokenizer.json` when it has one, else `vocab.json` +
    /// `merges.txt` with the special tokens of `tokenizer_config.json` and then `special_tokens_map.json`
    /// (the later file wins, as in transformers) (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_dir(dir: &std::path::Path) -> Result<Self> {
        let (name, bytes) = Self::tokenizer_json_of_dir(dir)?;
        Self::from_bytes(&name, &bytes)
    }

    /// The `tokenizer.json` bytes [`Self::read_dir`] builds the tokenizer from, and their name.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn tokenizer_json_of_dir(dir: &std::path::Path) -> Result<(String, Vec<u8>)> {
        use crate::files::{MAX_SMALL_FILE, read_bytes_at_most};
        let json = dir.join("tokenizer.json");
        if json.exists() {
            return Ok((json.display().to_string(), read_bytes_at_most(&json, MAX_SMALL_FILE)?));
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if !vocab.exists() || !merges.exists() {
            return Err(Error::file(dir.display().to_string(), "holds neither tokenizer.json nor vocab.json + merges.txt"));
        }
        let mut special = SpecialTokens::default();
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(name);
            if path.exists() {
                special = special.with_json(&path.display().to_string(), &read_bytes_at_most(&path, MAX_SMALL_FILE)?)?;
            }
        }
        let (vocab_name, merges_name) = (vocab.display().to_string(), merges.display().to_string());
        let bytes = tokenizer_json_from_vocab((&vocab_name, &read_bytes_at_most(&vocab, MAX_SMALL_FILE)?), (&merges_name, &read_bytes_at_most(&merges, MAX_SMALL_FILE)?), &special)?;
        Ok((format!("{vocab_name} + merges.txt"), bytes))
    }

    /// The id of padding positions.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(path: &std::path::Path) -> Result<Self> {
        Self::from_bytes(&path.display().to_string(), &crate::files::read_bytes_at_most(path, crate::files::MAX_SMALL_FILE)?)
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

/// The special tokens of a CLIP tokenizer, as transformers' `CLIPTokenizer` defaults them; a pipeline's
/// `tokenizer/special_tokens_map.json` or `tokenizer_config.json` may change them (SD 2.x pads with `!`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpecialTokens {
    pub bos: String,
    pub eos: String,
    pub unk: String,
    pub pad: String,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        Self { bos: "<|startoftext|>".into(), eos: "<|endoftext|>".into(), unk: "<|endoftext|>".into(), pad: "<|endoftext|>".into() }
    }
}

impl SpecialTokens {
    /// Reads `bos_token`, `eos_token`, `unk_token` and `pad_token` from a `special_tokens_map.json` or
    /// `tokenizer_config.json` object (each a string or `{"content": …}`); absent ones keep the defaults.
    pub fn with_json(mut self, file: &str, json: &[u8]) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| Error::file(file, format!("is not valid JSON: {e}")))?;
        for (field, slot) in [("bos_token", &mut self.bos), ("eos_token", &mut self.eos), ("unk_token", &mut self.unk), ("pad_token", &mut self.pad)] {
            match value.get(field) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(t)) => *slot = t.clone(),
                Some(v) => match v.get("content").and_then(|c| c.as_str()) {
                    Some(t) => *slot = t.to_string(),
                    None => return Err(Error::config(file, field, "must be a string or an object with a string `content`")),
                },
            }
        }
        Ok(self)
    }
}

/// The `tokenizer.json` that transformers' `CLIPTokenizer` builds from a `vocab.json` (token → id) and a
/// `merges.txt` (an optional `#version` line, then one `left right` pair per line, in rank order): byte-level
/// BPE with the `</w>` end-of-word suffix, NFC + whitespace runs → " " + lower-casing, CLIP's split regex
/// (the special tokens kept whole), `<|startoftext|>` … `<|endoftext|>` around every text, and padding with
/// `special.pad` when it is not the end token. Each name in the pairs is used in error messages.
pub fn tokenizer_json_from_vocab(vocab: (&str, &[u8]), merges: (&str, &[u8]), special: &SpecialTokens) -> Result<Vec<u8>> {
    let (vocab_name, vocab_bytes) = vocab;
    let table: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(vocab_bytes).map_err(|e| Error::file(vocab_name, format!("is not a JSON object of token → id: {e}")))?;
    if table.is_empty() {
        return Err(Error::file(vocab_name, "holds no tokens"));
    }
    let mut ids = std::collections::HashSet::with_capacity(table.len());
    for (token, id) in &table {
        let id = id.as_u64().filter(|&i| i < u32::MAX as u64).ok_or_else(|| Error::file(vocab_name, format!("the id of `{token}` is not a non-negative integer")))?;
        if !ids.insert(id) {
            return Err(Error::file(vocab_name, format!("id {id} is given to more than one token (again for `{token}`)")));
        }
    }
    let id_of = |token: &str, field: &str| -> Result<u64> {
        table.get(token).and_then(|v| v.as_u64()).ok_or_else(|| Error::file(vocab_name, format!("has no `{token}` token (the {field})")))
    };
    let (bos, eos) = (id_of(&special.bos, "start token")?, id_of(&special.eos, "end token")?);
    id_of(&special.unk, "unknown token")?;
    let pad = id_of(&special.pad, "padding token")?;

    let (merges_name, merges_bytes) = merges;
    let text = std::str::from_utf8(merges_bytes).map_err(|e| Error::file(merges_name, format!("is not UTF-8 text: {e}")))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split(' ').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(Error::file(format!("{merges_name}:{}", i + 1), format!("`{}` is not a merge (two tokens separated by one space)", line.escape_debug())));
        }
        let merged = format!("{}{}", parts[0], parts[1]);
        if !table.contains_key(&merged) {
            return Err(Error::file(format!("{merges_name}:{}", i + 1), format!("merges into `{merged}`, which vocab.json does not have")));
        }
        pairs.push(serde_json::json!([parts[0], parts[1]]));
    }

    let added = |id: u64, content: &str| serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let mut added_tokens = vec![added(bos, &special.bos), added(eos, &special.eos)];
    if pad != eos && pad != bos {
        added_tokens.push(added(pad, &special.pad));
    }
    let split = format!(r"{}|{}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex_escape(&special.bos), regex_escape(&special.eos));
    let padding = (pad != eos).then(|| {
        serde_json::json!({"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": null, "pad_id": pad, "pad_type_id": 0, "pad_token": special.pad})
    });
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": padding,
        "added_tokens": added_tokens,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": {"type": "RobertaProcessing", "sep": [special.eos, eos], "cls": [special.bos, bos], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": special.unk, "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": table, "merges": pairs},
    });
    Ok(serde_json::to_vec(&json).expect("a tokenizer.json serializes"))
}

/// `text` with the regex metacharacters escaped (`<|endoftext|>` → `<\|endoftext\|>`).
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
