//! Bundles: one folder with everything a generation needs, as the page downloads it.
//!
//! `manifest.json` (format documented in docs/bundle.md) names every file with its sha256 and size and
//! carries the components' configs inline; the weights are safetensors (f16 or f32). Loading verifies
//! every file before use, so a corrupt or truncated download is reported by name.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
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

/// Re-encodes one tensor of a safetensors file in `dtype` (integers are kept). Values that do not fit f16
/// are refused by tensor name rather than silently becoming infinities.
pub fn convert_tensor(file: &SafeTensors, key: &str, dtype: StoreDType) -> Result<RawTensor> {
    if !file.is_float(key)? {
        return file.raw_tensor(key);
    }
    let (shape, values) = file.f32(key)?;
    Ok(match dtype {
        StoreDType::F32 => RawTensor::f32(key, shape, &values),
        StoreDType::F16 => {
            let mut bytes = Vec::with_capacity(values.len() * 2);
            for v in &values {
                let h = half::f16::from_f32(*v);
                if !h.is_finite() {
                    return Err(Error::tensor(file.file_of(key), key, format!("value {v} does not fit in f16; bundle it as f32")));
                }
                bytes.extend_from_slice(&h.to_le_bytes());
            }
            RawTensor { name: key.to_string(), dtype: DType::F16, shape, bytes }
        }
    })
}

/// The size a tensor's data will have once stored in `dtype`.
pub fn stored_len(file: &SafeTensors, key: &str, dtype: StoreDType) -> Result<usize> {
    let numel: usize = file.shape(key)?.iter().product();
    Ok(match (file.is_float(key)?, dtype) {
        (false, _) => file.data_len(key)?,
        (true, StoreDType::F32) => numel * 4,
        (true, StoreDType::F16) => numel * 2,
    })
}

/// The tensors of a file in `dtype`, planned into shards of at most `max_bytes` of data each (names only,
/// in name order; a tensor over `max_bytes` gets a shard of its own, as safetensors cannot split one), so that a converter can then build and write one shard at
/// a time and never hold a whole converted copy of a large component.
pub fn plan_shards(file: &SafeTensors, dtype: StoreDType, max_bytes: usize) -> Result<Vec<Vec<String>>> {
    let sized = file.keys().map(|k| Ok((k.to_string(), stored_len(file, k, dtype)?))).collect::<Result<Vec<_>>>()?;
    Ok(group_by_size(sized, max_bytes))
}

/// A size in bytes: a whole number with an optional K, M or G suffix (binary: KiB, MiB, GiB).
pub fn parse_size(flag: &str, text: &str) -> Result<usize> {
    let bad = || Error::invalid(flag, format!("`{text}` is not a size (a whole number of bytes, or with K, M or G: 32M)"));
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

/// Consecutive groups of items whose sizes add up to at most `max_bytes` (an item over it alone); at least
/// one group.
fn group_by_size<T>(items: Vec<(T, usize)>, max_bytes: usize) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut size = 0;
    for (item, n) in items {
        let fits = groups.last().is_some_and(|g| !g.is_empty() && size + n <= max_bytes);
        if !fits {
            groups.push(Vec::new());
            size = 0;
        }
        size += n;
        groups.last_mut().expect("a group was pushed").push(item);
    }
    if groups.is_empty() {
        groups.push(Vec::new());
    }
    groups
}

/// The file names of a component's `count` weight files: `unet.safetensors` when there is one,
/// `unet-00001-of-00003.safetensors` … when it is sharded (transformers' convention).
pub fn shard_file_names(component: &str, count: usize) -> Vec<String> {
    match count {
        1 => vec![format!("{component}.safetensors")],
        n => (1..=n).map(|i| format!("{component}-{i:05}-of-{n:05}.safetensors")).collect(),
    }
}

/// The components' names in a manifest (and in the file names `control-clip bundle` gives their weights).
pub mod component {
    pub const TOKENIZER: &str = "tokenizer";
    pub const TEXT_ENCODER: &str = "text_encoder";
    pub const UNET: &str = "unet";
    pub const DECODER: &str = "decoder";
    pub const SCHEDULER: &str = "scheduler";
    pub const CATEGORY_ENCODER: &str = "category_encoder";
    pub const STYLE_ENCODER: &str = "style_encoder";
    pub const ADAPTER: &str = "adapter";
    /// The weights components, in the order a bundle lists them.
    pub const WEIGHTS: [&str; 6] = [TEXT_ENCODER, UNET, DECODER, CATEGORY_ENCODER, STYLE_ENCODER, ADAPTER];
    /// The optional Control-CLIP components.
    pub const CONTROL: [&str; 3] = [CATEGORY_ENCODER, STYLE_ENCODER, ADAPTER];
    /// Those a bundle must have.
    pub const REQUIRED: [&str; 5] = [TOKENIZER, TEXT_ENCODER, UNET, DECODER, SCHEDULER];
}

/// The longest file name a manifest may give.
pub const MAX_FILE_NAME: usize = 128;

/// The largest size a manifest may declare for one file: 16 GiB (an SD-1.5 UNet in f32 is 3.4 GB; wasm32
/// cannot hold even 4 GiB). A larger figure is refused at parse time rather than trusted by a reader.
pub const MAX_FILE_BYTES: u64 = 16 << 30;

/// The largest manifest read: 4 MiB. A real one is a few kilobytes (an SD 1.5 manifest with every config
/// inline is about 20 KB), and parsing JSON takes some 30 times its size in memory (a 58 MB manifest took
/// 1.9 GB), so the bound holds the parse to about 130 MB. The page applies the same number (www/worker.js).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A bundle's file names are joined to its folder (natively) or resolved against its URL (in the page), so
/// a name must stay inside the bundle: 1 to [`MAX_FILE_NAME`] characters of ASCII letters, digits, `.`, `_`
/// and `-`, not starting with `.`. That refuses path separators (`/`, `\`), `.` and `..`, absolute paths,
/// drive letters and URL schemes (`:`), query and fragment marks, percent-escapes and control characters.
pub fn check_file_name(manifest: &str, field: &str, name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > MAX_FILE_NAME {
        Some(format!("is {} characters long (at most {MAX_FILE_NAME})", name.len()))
    } else if name.starts_with('.') {
        Some(format!("`{}` starts with `.`", name.escape_debug()))
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("`{}` contains `{}`", name.escape_debug(), c.escape_debug()))
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(Error::config(manifest, field, format!("{p}: a bundle file must be a plain name in the bundle's folder (letters, digits, `.`, `_`, `-`)"))),
    }
}

/// One file of a bundle: its name in the folder, sha256 and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

impl BundleFile {
    /// The entry for `bytes` written as `name`.
    pub fn of(name: &str, bytes: &[u8]) -> Self {
        Self { file: name.to_string(), sha256: sha256_hex(bytes), bytes: bytes.len() as u64 }
    }
}

/// A weights component's files: one file, or shards (format version 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "either `file`, `sha256` and `bytes`, or `shards`: a non-empty list of such entries")]
pub enum Files {
    Shards { shards: Vec<BundleFile> },
    One(BundleFile),
}

impl Files {
    pub fn list(&self) -> &[BundleFile] {
        match self {
            Files::Shards { shards } => shards,
            Files::One(f) => std::slice::from_ref(f),
        }
    }

    /// One file, or shards when there are several.
    pub fn from_list(mut files: Vec<BundleFile>) -> Self {
        match files.len() {
            1 => Files::One(files.pop().expect("one file")),
            _ => Files::Shards { shards: files },
        }
    }
}

/// How a Control-CLIP encoder is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderForm {
    /// A CLIP text model of E's architecture; `config` is its config.json.
    Full,
    /// Low-rank deltas over E; `config` is PEFT's adapter_config.json.
    Lora,
}

/// A component with weights: its files, storage dtype, form (encoders) and inline config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightsComponent {
    #[serde(flatten)]
    pub files: Files,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<EncoderForm>,
    pub config: Map<String, Value>,
}

/// The scheduler: a config only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerComponent {
    pub config: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Components {
    pub tokenizer: BundleFile,
    pub text_encoder: WeightsComponent,
    pub unet: WeightsComponent,
    pub decoder: WeightsComponent,
    pub scheduler: SchedulerComponent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_encoder: Option<WeightsComponent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style_encoder: Option<WeightsComponent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<WeightsComponent>,
}

impl Components {
    /// The weights component called `name` (one of [`component::WEIGHTS`]), if the bundle has it.
    pub fn weights(&self, name: &str) -> Option<&WeightsComponent> {
        match name {
            component::TEXT_ENCODER => Some(&self.text_encoder),
            component::UNET => Some(&self.unet),
            component::DECODER => Some(&self.decoder),
            component::CATEGORY_ENCODER => self.category_encoder.as_ref(),
            component::STYLE_ENCODER => self.style_encoder.as_ref(),
            component::ADAPTER => self.adapter.as_ref(),
            _ => None,
        }
    }

    /// Refuses any file name that is not a plain name inside the bundle (see [`check_file_name`]), naming
    /// the manifest field, before anything is read or fetched, any sha256 that is not 64 hexadecimal digits
    /// (either case), and any declared size over [`MAX_FILE_BYTES`].
    fn check_files(&self, manifest: &str) -> Result<()> {
        let check = |field: String, f: &BundleFile| -> Result<()> {
            check_file_name(manifest, &format!("{field}.file"), &f.file)?;
            if !(f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit())) {
                return Err(Error::config(manifest, format!("{field}.sha256"), format!("`{}` is not a sha256 digest (64 hexadecimal digits)", f.sha256)));
            }
            if f.bytes > MAX_FILE_BYTES {
                return Err(Error::config(manifest, format!("{field}.bytes"), format!("{} bytes is more than any bundle file may hold ({MAX_FILE_BYTES})", f.bytes)));
            }
            Ok(())
        };
        check("components.tokenizer".into(), &self.tokenizer)?;
        // The tokenizer is read whole and parsed as JSON, as every small file is: the same bound.
        if self.tokenizer.bytes > crate::limits::MAX_SMALL_FILE {
            return Err(Error::config(
                manifest,
                "components.tokenizer.bytes",
                format!("{} bytes is more than a tokenizer file may hold ({})", self.tokenizer.bytes, crate::limits::MAX_SMALL_FILE),
            ));
        }
        for name in component::WEIGHTS {
            let Some(c) = self.weights(name) else { continue };
            match &c.files {
                Files::One(f) => check(format!("components.{name}"), f)?,
                Files::Shards { shards } => {
                    for (i, f) in shards.iter().enumerate() {
                        check(format!("components.{name}.shards[{i}]"), f)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every file of the bundle but the manifest: the tokenizer, then each weights component's files.
    pub fn files(&self) -> Vec<&BundleFile> {
        let weights = component::WEIGHTS.iter().filter_map(|name| self.weights(name)).flat_map(|c| c.files.list());
        std::iter::once(&self.tokenizer).chain(weights).collect()
    }
}

/// The settings a page starts from (`control-clip bundle --steps …`); numbers as the user wrote them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Defaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style_weight: Option<f64>,
}

/// `manifest.json`: the one definition of the format (docs/bundle.md), read by the pipeline and the page
/// (through wasm) and written by `control-clip bundle`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default)]
    pub defaults: Defaults,
    pub components: Components,
    /// Where the manifest came from (folder or URL), for messages; not part of the file.
    #[serde(skip)]
    pub origin: String,
}

impl Manifest {
    /// A new manifest of the current format version.
    pub fn new(name: &str, licence: &str, defaults: Defaults, components: Components) -> Self {
        Self {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            name: Some(name.to_string()),
            licence: Some(licence.to_string()),
            created_by: Some(format!("control-clip {}", env!("CARGO_PKG_VERSION"))),
            defaults,
            components,
            origin: String::new(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serializes")
    }

    /// Parses and checks a manifest: its format and version first (so that another file or a newer
    /// bundle is named as such), then each component, naming the field that is wrong.
    pub fn parse(origin: &str, text: &str) -> Result<Self> {
        let file = format!("{origin}/{MANIFEST}");
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Error::file(&file, format!("is {} bytes, over the {MAX_MANIFEST_BYTES}-byte limit for a manifest (a real one is a few kilobytes)", text.len())));
        }
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
        let object = Value::Object(c.object);
        // Deserialized from the borrowed value: a good manifest is read once, a bad one again by `explain`.
        let mut manifest = Manifest::deserialize(&object).map_err(|e| Self::explain(&file, &object, e))?;
        if let Some(name) = component::WEIGHTS.into_iter().find(|n| manifest.components.weights(n).is_some_and(|c| c.files.list().is_empty())) {
            return Err(Error::config(&file, format!("components.{name}.shards"), "must be a non-empty list of files"));
        }
        manifest.components.check_files(&file)?;
        manifest.origin = origin.to_string();
        Ok(manifest)
    }

    /// Names the part of a manifest that did not deserialize: the component at fault when there is one
    /// (serde's own message does not say where it was), else serde's message.
    fn explain(file: &str, manifest: &Value, e: serde_json::Error) -> Error {
        if let Some(defaults) = manifest.get("defaults")
            && let Err(e) = Defaults::deserialize(defaults)
        {
            return Error::config(file, "defaults", format!("the recommended settings do not read: {e}"));
        }
        let Some(components) = manifest.get("components").and_then(Value::as_object) else {
            return Error::config(file, "components", "missing or not an object");
        };
        if let Some(name) = component::REQUIRED.into_iter().find(|name| !components.contains_key(*name)) {
            return Error::config(file, format!("components.{name}"), "missing");
        }
        for (name, value) in components {
            let parsed = match name.as_str() {
                component::TOKENIZER => BundleFile::deserialize(value).map(drop),
                component::SCHEDULER => SchedulerComponent::deserialize(value).map(drop),
                _ => WeightsComponent::deserialize(value).map(drop),
            };
            if let Err(e) = parsed {
                return Error::config(file, format!("components.{name}"), e.to_string());
            }
        }
        Error::file(file, format!("not a valid manifest: {e}"))
    }

    /// The inline config of a component, as a ConfigJson named after the manifest.
    pub fn config(&self, name: &str) -> Result<ConfigJson> {
        let object = match name {
            component::SCHEDULER => &self.components.scheduler.config,
            _ => &self.component(name)?.config,
        };
        Ok(ConfigJson { file: format!("{}/{MANIFEST} (components.{name}.config)", self.origin), object: object.clone() })
    }

    /// A weights component the bundle must have for this use.
    pub fn component(&self, name: &str) -> Result<&WeightsComponent> {
        self.components.weights(name).ok_or_else(|| Error::config(format!("{}/{MANIFEST}", self.origin), format!("components.{name}"), "missing"))
    }

    /// The manifest's entry for a file of the bundle.
    pub fn file(&self, name: &str) -> Result<&BundleFile> {
        self.components.files().into_iter().find(|f| f.file == name).ok_or_else(|| Error::file(self.path(name), "not listed in the manifest"))
    }

    /// A bundle file's path or URL, for messages.
    pub fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.origin)
    }

    /// Checks a file's size and digest (hex sha256, computed by the caller: natively with [`sha256_hex`], in
    /// the browser with `crypto.subtle`) against the manifest: size first (a truncated download), then
    /// sha256 (a corrupt one). Hex digits compare in either case: a manifest written by hand with an
    /// uppercase digest (`certutil`, PowerShell's `Get-FileHash`) names the same bytes.
    pub fn verify_digest(&self, file: &BundleFile, len: u64, sha256: &str) -> Result<()> {
        let path = self.path(&file.file);
        if len != file.bytes {
            return Err(Error::file(path, format!("{len} bytes, the manifest says {} (truncated or wrong file)", file.bytes)));
        }
        if !sha256.eq_ignore_ascii_case(&file.sha256) {
            return Err(Error::file(path, format!("sha256 {sha256} does not match the manifest's {} (corrupt or wrong file)", file.sha256)));
        }
        Ok(())
    }

    /// The weights of component `name`, its shards read as one set; `fetch(file)` returns a file's bytes,
    /// already verified (the pipeline, the fine-tuning command and the page all read weights this way).
    pub async fn read_weights<F, Fut>(&self, name: &str, fetch: F) -> Result<SafeTensors>
    where
        F: Fn(BundleFile) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>>>,
    {
        let files = self.component(name)?.files.list().to_vec();
        let count = files.len();
        let mut shards = Vec::new();
        for file in files {
            let path = self.path(&file.file);
            shards.push(SafeTensors::from_bytes(path, fetch(file).await?)?);
        }
        match count {
            1 => Ok(shards.pop().expect("one shard")),
            n => SafeTensors::from_shards(format!("{}/{name} ({n} shards)", self.origin), shards),
        }
    }

    /// Reads one of the bundle folder's files and verifies it against the manifest (native only). It must
    /// be a regular file, not a symbolic link (refused by name, whatever the link's target: no file outside
    /// the folder is read, nor its size or digest shown), and no more than the manifest's size is read.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_verified(&self, dir: &std::path::Path, file: &BundleFile) -> Result<Vec<u8>> {
        let path = dir.join(&file.file);
        let (opened, len) = crate::files::open_in_bundle(&path)?;
        // The size first, from the opened file: a file of the wrong size is never read into memory.
        if len != file.bytes {
            self.verify_digest(file, len, "")?;
        }
        let bytes = crate::files::read_opened(&path, opened, file.bytes)?;
        self.verify(file, &bytes)?;
        Ok(bytes)
    }

    /// [`Manifest::verify_digest`] of bytes in memory.
    pub fn verify(&self, file: &BundleFile, bytes: &[u8]) -> Result<()> {
        let len = bytes.len() as u64;
        // A wrong size is reported without hashing.
        if len != file.bytes {
            return self.verify_digest(file, len, "");
        }
        self.verify_digest(file, len, &sha256_hex(bytes))
    }

    /// Reads a bundle folder's manifest (native; a regular file, not a symbolic link).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_dir(dir: &std::path::Path) -> Result<Self> {
        Self::parse(&dir.display().to_string(), &crate::files::read_text_in_bundle(&dir.join(MANIFEST), MAX_MANIFEST_BYTES)?)
    }
}
