//! Bundles: one folder with everything a generation needs, as the page downloads it.
//!
//! `manifest.json` (format documented in docs/bundle.md) names every file with its sha256 and size and
//! carries the components' configs inline; the weights are safetensors (f16 or f32). Loading verifies
//! every file before use, so a corrupt or truncated download is reported by name.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::ConfigJson;
use crate::error::{Error, Result};
use crate::weights::{DType, RawTensor, SafeTensors, serialize};

pub const FORMAT: &str = "control-clip-bundle";
pub const FORMAT_VERSION: u64 = 1;
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
pub fn convert_weights(file: &SafeTensors, dtype: StoreDType) -> Result<Vec<u8>> {
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
                        return Err(Error::tensor(file.name(), &raw.name, format!("value {v} does not fit in f16; bundle it as f32")));
                    }
                    bytes.extend_from_slice(&h.to_le_bytes());
                }
                RawTensor { name: raw.name.clone(), dtype: DType::F16, shape, bytes }
            }
        });
    }
    Ok(serialize(&out))
}

/// One file of a bundle as the manifest records it.
pub fn file_entry(name: &str, bytes: &[u8]) -> Value {
    json!({"file": name, "sha256": sha256_hex(bytes), "bytes": bytes.len()})
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
        if version != FORMAT_VERSION {
            return Err(Error::config(
                &file,
                "format_version",
                format!("version {version} is not supported (this build reads version {FORMAT_VERSION}); rebuild the bundle with a matching control-clip"),
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

    /// The file of a component: (name, sha256, size).
    pub fn file(&self, component: &str) -> Result<(String, String, u64)> {
        let c = self.component(component)?;
        let field = |f: &str| Error::config(format!("{}/{MANIFEST}", self.origin), format!("components.{component}.{f}"), "missing or of the wrong type");
        Ok((
            c["file"].as_str().ok_or_else(|| field("file"))?.to_string(),
            c["sha256"].as_str().ok_or_else(|| field("sha256"))?.to_string(),
            c["bytes"].as_u64().ok_or_else(|| field("bytes"))?,
        ))
    }

    /// Checks downloaded bytes against the manifest: size first (a truncated download), then sha256.
    pub fn verify(&self, component: &str, bytes: &[u8]) -> Result<()> {
        let (name, sha, size) = self.file(component)?;
        let path = format!("{}/{name}", self.origin);
        if bytes.len() as u64 != size {
            return Err(Error::file(path, format!("{} bytes, the manifest says {size} (truncated or wrong file)", bytes.len())));
        }
        let got = sha256_hex(bytes);
        if got != sha {
            return Err(Error::file(path, format!("sha256 {got} does not match the manifest's {sha} (corrupt or wrong file)")));
        }
        Ok(())
    }
}
