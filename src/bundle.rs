//! Bundles: one folder with everything a generation needs, as the page downloads it.
//!
//! `manifest.json` (format documented in docs/bundle.md) names every file with its sha256 and size and
//! carries the components' configs inline; the weights are safetensors (f16 or f32). Loading verifies
//! every file before use, so a corrupt or truncated download is reported by name.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::weights::{DType, RawTensor, SafeTensors};

pub const FORMAT: &str = "control-clip-bundle";
/// The version `control-clip bundle` writes. Version 2 added `shards`; a version-1 bundle (one file per
/// component) is still read.
pub const FORMAT_VERSION: u64 = 2;
pub const READ_VERSIONS: std::ops::RangeInclusive<u64> = 1..=FORMAT_VERSION;
pub const MANIFEST: &str = "manifest.json";


/// Storage precision of a bundle's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDType {
    F16,
    F32,
}

impl std::str::FromStr for StoreDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" | "fp16" | "float16" => Ok(StoreDType::F16),
            "f32" | "fp32" | "float32" => Ok(StoreDType::F32),
            other => Err(Error::invalid("dtype", format!("unknown dtype `{other}` (expected f16 or f32)"))),
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Re-encodes every float tensor of a safetensors file in `dtype` (integers are kept). Values that do
/// not fit f16 are refused by tensor name rather than silently becoming infinities.
pub fn convert_weights(file: &SafeTensors, dtype: StoreDType) -> Result<Vec<RawTensor>> {
    let mut out = Vec::new();
    for raw in file.raw_tensors() {
        if !raw.dtype.is_float() {
            out.push(raw);
            continue;
        }
        let (shape, values) = file.f32(&raw.name)?;
        out.push(match dtype {
            StoreDType::F32 => RawTensor::f32(raw.name.clone(), shape, &values),
            StoreDType::F16 => {
                let mut bytes = Vec::with_capacity(values.len() * 2);
                for v in &values {
                    let h = half::f16::from_f32(*v);
                    if !h.is_finite() {
                        return Err(Error::tensor(file.file_of(&raw.name), &raw.name, format!("value {v} does not fit in f16; bundle it as f32")));
                    }
                    bytes.extend_from_slice(&h.to_le_bytes());
                }
                RawTensor { name: raw.name.clone(), dtype: DType::F16, shape, bytes }
            }
        });
    }
    Ok(out)
}

/// A size in bytes: a whole number with an optional K, M or G suffix (binary: KiB, MiB, GiB).
pub fn parse_size(text: &str) -> Result<usize> {
    let bad = || Error::invalid("--shard-size", format!("`{text}` is not a size (a whole number of bytes, or with K, M or G: 32M)"));
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: usize = digits.parse().map_err(|_| bad())?;
    n.checked_shl(shift).filter(|&b| b > 0 && b >> shift == n).ok_or_else(bad)
}

/// Splits tensors (kept in order) into groups whose data stays within `max_bytes` each. A tensor larger
/// than `max_bytes` gets a group of its own (safetensors cannot split a tensor).
pub fn shard_tensors(tensors: Vec<RawTensor>, max_bytes: usize) -> Vec<Vec<RawTensor>> {
    let mut shards: Vec<Vec<RawTensor>> = Vec::new();
    let mut size = 0;
    for t in tensors {
        let fits = shards.last().is_some_and(|s| !s.is_empty() && size + t.bytes.len() <= max_bytes);
        if !fits {
            shards.push(Vec::new());
            size = 0;
        }
        size += t.bytes.len();
        shards.last_mut().expect("a shard was pushed").push(t);
    }
    if shards.is_empty() {
        shards.push(Vec::new());
    }
    shards
}

/// The file names of a component's `count` weight files: `unet.safetensors` when there is one,
/// `unet-00001-of-00003.safetensors` … when it is sharded (transformers' convention).
pub fn shard_file_names(component: &str, count: usize) -> Vec<String> {
    match count {
        1 => vec![format!("{component}.safetensors")],
        n => (1..=n).map(|i| format!("{component}-{i:05}-of-{n:05}.safetensors")).collect(),
    }
}

/// One file of a bundle as the manifest records it.
pub fn file_entry(name: &str, bytes: &[u8]) -> Value {
    json!({"file": name, "sha256": sha256_hex(bytes), "bytes": bytes.len()})
}

/// One file of a bundle: its name in the folder, sha256 and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// A parsed, version-checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub value: Value,
    /// Where the manifest came from (folder or URL), for messages.
    pub origin: String,
}

impl Manifest {
    pub fn parse(origin: &str, text: &str) -> Result<Self> {
        let file = format!("{origin}/{MANIFEST}");
        let c = ConfigJson::parse(&file, text)?;
        if c.str_or("format", "")? != FORMAT {
            return Err(Error::config(&file, "format", format!("expected \"{FORMAT}\": this is not a control-clip bundle")));
        }
        let version = c.usize("format_version")? as u64;
        if !READ_VERSIONS.contains(&version) {
            return Err(Error::config(
                &file,
                "format_version",
                format!(
                    "version {version} is not supported (this build reads versions {} to {}); rebuild the bundle with a matching control-clip",
                    READ_VERSIONS.start(),
                    READ_VERSIONS.end()
                ),
            ));
        }
        Ok(Self { value: Value::Object(c.object), origin: origin.to_string() })
    }

    fn component(&self, name: &str) -> Result<&Value> {
        self.value["components"].get(name).ok_or_else(|| Error::config(format!("{}/{MANIFEST}", self.origin), format!("components.{name}"), "missing"))
    }

    /// Whether the manifest lists an (optional) component.
    pub fn has(&self, component: &str) -> bool {
        self.value["components"].get(component).is_some()
    }

    /// How an encoder component is stored: "full" (a CLIP text model) or "lora" (deltas over the text
    /// encoder); absent means full.
    pub fn form(&self, component: &str) -> Result<&str> {
        match self.component(component)?.get("form") {
            None => Ok("full"),
            Some(Value::String(f)) if f == "full" || f == "lora" => Ok(f),
            Some(other) => Err(Error::config(
                format!("{}/{MANIFEST}", self.origin),
                format!("components.{component}.form"),
                format!("{other} is not a known form (\"full\" or \"lora\")"),
            )),
        }
    }

    /// The inline config of a component, as a ConfigJson named after the manifest.
    pub fn config(&self, component: &str) -> Result<ConfigJson> {
        let file = format!("{}/{MANIFEST} (components.{component}.config)", self.origin);
        match self.component(component)?.get("config") {
            Some(Value::Object(o)) => Ok(ConfigJson { file, object: o.clone() }),
            _ => Err(Error::config(format!("{}/{MANIFEST}", self.origin), format!("components.{component}.config"), "missing or not an object")),
        }
    }

    /// The files of a component, in order: its one `file`, or its `shards` (format version 2).
    pub fn files(&self, component: &str) -> Result<Vec<BundleFile>> {
        let c = self.component(component)?;
        let field = |f: String| Error::config(format!("{}/{MANIFEST}", self.origin), format!("components.{component}.{f}"), "missing or of the wrong type");
        let entry = |e: &Value, at: &str| -> Result<BundleFile> {
            Ok(BundleFile {
                name: e["file"].as_str().ok_or_else(|| field(format!("{at}file")))?.to_string(),
                sha256: e["sha256"].as_str().ok_or_else(|| field(format!("{at}sha256")))?.to_string(),
                bytes: e["bytes"].as_u64().ok_or_else(|| field(format!("{at}bytes")))?,
            })
        };
        match c.get("shards") {
            None => Ok(vec![entry(c, "")?]),
            Some(Value::Array(shards)) if !shards.is_empty() => {
                shards.iter().enumerate().map(|(i, s)| entry(s, &format!("shards[{i}]."))).collect()
            }
            Some(_) => Err(Error::config(format!("{}/{MANIFEST}", self.origin), format!("components.{component}.shards"), "must be a non-empty list of files")),
        }
    }

    /// Checks downloaded bytes against the manifest: size first (a truncated download), then sha256.
    pub fn verify(&self, file: &BundleFile, bytes: &[u8]) -> Result<()> {
        let path = format!("{}/{}", self.origin, file.name);
        if bytes.len() as u64 != file.bytes {
            return Err(Error::file(path, format!("{} bytes, the manifest says {} (truncated or wrong file)", bytes.len(), file.bytes)));
        }
        let got = sha256_hex(bytes);
        if got != file.sha256 {
            return Err(Error::file(path, format!("sha256 {got} does not match the manifest's {} (corrupt or wrong file)", file.sha256)));
        }
        Ok(())
    }
}
