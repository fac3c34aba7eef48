//! Safetensors reading with errors that name the file and the tensor.
//!
//! We parse the (simple) format ourselves rather than through a library so that every way a file can
//! be broken — empty, truncated, a header that lies about sizes, an unknown dtype — becomes a message
//! that says which file and which tensor. Stored f16 / bf16 / f64 are widened to f32 on load, and
//! non-finite weights are refused (a NaN in a checkpoint would otherwise surface as a black image).

use std::collections::BTreeMap;

use burn::tensor::{DType as TensorDType, Device, FloatDType, Int, Tensor, TensorData};
use half::{bf16, f16};

use crate::error::{Error, Result};

mod lora;
pub use lora::LowRankDeltas;

/// Element types a safetensors file may hold (the subset models and fixtures use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
}

impl DType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F64" => DType::F64,
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "I64" => DType::I64,
            "I32" => DType::I32,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I64 | DType::I32)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// Which of the files (shards) holds the tensor.
    file: usize,
    /// Absolute byte range inside that file.
    start: usize,
    end: usize,
}

/// A safetensors file held in memory (bytes from disk natively, from `fetch` in the browser), or the
/// shards of one component read as a single set of tensors.
pub struct SafeTensors {
    /// Names the whole set in messages about a missing tensor.
    name: String,
    /// Each file's name (for messages about its tensors) and bytes.
    files: Vec<(String, Vec<u8>)>,
    entries: BTreeMap<String, Entry>,
    /// The header's `__metadata__` (string to string, as the format defines it).
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensors").field("name", &self.name).field("tensors", &self.entries.len()).finish()
    }
}

impl SafeTensors {
    /// Reads a file from disk (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(path: &std::path::Path) -> Result<Self> {
        Self::from_bytes(path.display().to_string(), crate::files::read_bytes(path)?)
    }

    /// Parses and validates the header of `bytes`; `name` is used in every error message.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        let name = name.into();
        let data_start = header_end(&name, &bytes[..bytes.len().min(8)], bytes.len() as u64)? as usize;
        let (mut entries, metadata) = parse_header(&name, &bytes[8..data_start], (bytes.len() - data_start) as u64)?;
        for e in entries.values_mut() {
            e.start += data_start;
            e.end += data_start;
        }
        Ok(Self { name: name.clone(), files: vec![(name, bytes)], entries, metadata })
    }

    /// The shards of one component as one set of tensors; `name` names the set in messages. A tensor
    /// name that two shards both hold is refused, naming both.
    pub fn from_shards(name: impl Into<String>, shards: Vec<SafeTensors>) -> Result<Self> {
        let name = name.into();
        let mut out = Self { name, files: Vec::new(), entries: BTreeMap::new(), metadata: BTreeMap::new() };
        for shard in shards {
            let offset = out.files.len();
            for (key, mut entry) in shard.entries {
                entry.file += offset;
                if let Some(other) = out.entries.get(&key) {
                    let first = &out.files[other.file].0;
                    return Err(Error::tensor(&shard.files[entry.file - offset].0, &key, format!("also in {first}: shards must not overlap")));
                }
                out.entries.insert(key, entry);
            }
            out.files.extend(shard.files);
        }
        Ok(out)
    }

    /// The bytes of a tensor and the name of the file that holds it.
    fn data(&self, e: &Entry) -> (&str, &[u8]) {
        let (file, bytes) = &self.files[e.file];
        (file.as_str(), &bytes[e.start..e.end])
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the file (shard) that holds `key`, for messages; the set's name if none does.
    pub fn file_of(&self, key: &str) -> &str {
        self.entries.get(key).map_or(&self.name, |e| &self.files[e.file].0)
    }

    /// A `__metadata__` entry of the header.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn shape(&self, key: &str) -> Result<&[usize]> {
        Ok(&self.entry(key)?.shape)
    }

    /// Whether a tensor holds floats (else integers).
    pub fn is_float(&self, key: &str) -> Result<bool> {
        Ok(self.entry(key)?.dtype.is_float())
    }

    fn entry(&self, key: &str) -> Result<&Entry> {
        self.entries.get(key).ok_or_else(|| Error::tensor(&self.name, key, "missing from the file"))
    }

    /// A float tensor widened to f32, with its shape. Refuses int tensors and non-finite values.
    pub fn f32(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let e = self.entry(key)?;
        let (file, raw) = self.data(e);
        if !e.dtype.is_float() {
            return Err(Error::tensor(file, key, format!("expected a float tensor, found {:?}", e.dtype)));
        }
        let values: Vec<f32> = match e.dtype {
            DType::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            DType::F16 => raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            DType::I64 | DType::I32 => unreachable!(),
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::tensor(file, key, format!("non-finite value {} at flat index {i}", values[i])));
        }
        Ok((e.shape.clone(), values))
    }

    /// An integer tensor as i64, with its shape.
    pub fn i64(&self, key: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let e = self.entry(key)?;
        let (file, raw) = self.data(e);
        let values = match e.dtype {
            DType::I64 => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
            DType::I32 => raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
            other => {
                return Err(Error::tensor(file, key, format!("expected an integer tensor, found {other:?}")));
            }
        };
        Ok((e.shape.clone(), values))
    }

    /// A float tensor of exactly `shape`, on `device`.
    pub fn tensor<const D: usize>(&self, key: &str, shape: [usize; D], device: &Device) -> Result<Tensor<D>> {
        let (found, values) = self.f32(key)?;
        if found != shape {
            return Err(Error::tensor(self.file_of(key), key, format!("expected shape {shape:?}, found {found:?}")));
        }
        check_binding(self.file_of(key), key, values.len(), FloatDType::F32, device)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    /// An integer tensor of rank `D` (any sizes), on `device`.
    pub fn int_tensor<const D: usize>(&self, key: &str, device: &Device) -> Result<Tensor<D, Int>> {
        let (shape, values) = self.i64(key)?;
        let shape: [usize; D] = shape.clone().try_into().map_err(|_| {
            Error::tensor(self.file_of(key), key, format!("expected a rank-{D} tensor, found shape {shape:?}"))
        })?;
        let values: Vec<i32> = values.into_iter().map(|v| v as i32).collect();
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

/// safetensors' own limit on a header (100 MB): a larger one is refused before it is read.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Where a safetensors file's data section starts (8 + the header's length), from its first 8 bytes and
/// the file's length; a header that claims more bytes than the file has is refused.
fn header_end(name: &str, first: &[u8], file_len: u64) -> Result<u64> {
    let fail = |m: String| Error::file(name, m);
    if file_len == 0 {
        return Err(fail("the file is empty (0 bytes), not a safetensors file".into()));
    }
    if first.len() < 8 {
        return Err(fail(format!("truncated: {file_len} bytes, too short for a safetensors header")));
    }
    let header_len = u64::from_le_bytes(first[..8].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_BYTES && header_len < file_len {
        return Err(fail(format!("the header claims {header_len} bytes, over safetensors' limit of {MAX_HEADER_BYTES}")));
    }
    8u64.checked_add(header_len).filter(|&end| end <= file_len && header_len <= MAX_HEADER_BYTES).ok_or_else(|| {
        fail(format!("truncated or not safetensors: the header claims {header_len} bytes but the file has {file_len} bytes"))
    })
}

/// The tensors a header lists (offsets relative to the data section, each checked against its shape and
/// against `data_len`) and its `__metadata__`.
fn parse_header(name: &str, header: &[u8], data_len: u64) -> Result<(BTreeMap<String, Entry>, BTreeMap<String, String>)> {
    let fail = |m: String| Error::file(name, m);
    let header: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| fail(format!("the safetensors header is not valid JSON: {e}")))?;
    let header = header.as_object().ok_or_else(|| fail("the safetensors header is not a JSON object".into()))?;
    let mut entries = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (key, info) in header {
        if key == "__metadata__" {
            let map = info.as_object().ok_or_else(|| fail("`__metadata__` is not a JSON object".into()))?;
            for (k, v) in map {
                let v = v.as_str().ok_or_else(|| fail(format!("`__metadata__.{k}` is not a string")))?;
                metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        let bad = |m: String| Error::tensor(name, key, m);
        let dtype_str = info.get("dtype").and_then(|v| v.as_str()).ok_or_else(|| bad("header entry has no `dtype`".into()))?;
        let dtype = DType::parse(dtype_str).ok_or_else(|| bad(format!("unsupported dtype {dtype_str}")))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| bad("header entry has no valid `shape`".into()))?;
        let offsets = info
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<Vec<_>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("header entry has no valid `data_offsets`".into()))?;
        let (begin, end) = (offsets[0], offsets[1]);
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let expected = numel.and_then(|n| n.checked_mul(dtype.size() as u64));
        if end < begin || Some(end - begin) != expected {
            return Err(bad(format!(
                "the header lies about sizes: shape {shape:?} of {dtype_str} needs {} bytes but data_offsets [{begin}, {end}] span {}",
                expected.map_or("too many".to_string(), |e| e.to_string()),
                end as i128 - begin as i128
            )));
        }
        if end > data_len {
            return Err(bad(format!(
                "truncated file: the tensor's data ends at byte {end} of the data section, which has only {data_len} bytes"
            )));
        }
        entries.insert(key.clone(), Entry { dtype, shape, file: 0, start: begin as usize, end: end as usize });
    }
    Ok((entries, metadata))
}

/// A safetensors file on disk known by its header alone, for a file of which only some tensors are
/// wanted at a time (a single-file checkpoint holds three models, and often EMA copies besides): the
/// wanted tensors are then read by their byte ranges, never the whole file.
#[cfg(not(target_arch = "wasm32"))]
pub struct FileIndex {
    path: std::path::PathBuf,
    name: String,
    data_start: u64,
    entries: BTreeMap<String, Entry>,
}

/// One tensor to take from a [`FileIndex`]: its name in the file, its new name, and a new shape when the
/// tensor is reinterpreted (same elements, e.g. a 1×1 convolution's [o, i, 1, 1] as a linear's [o, i]).
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub from: String,
    pub to: String,
    pub shape: Option<Vec<usize>>,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileIndex {
    /// Reads and checks the header of the file at `path` (only the header).
    pub fn read(path: &std::path::Path) -> Result<Self> {
        use std::io::Read;
        let name = path.display().to_string();
        let io = |e: std::io::Error| Error::file(&name, format!("cannot read: {e}"));
        let (mut file, len) = crate::files::open_regular(path, crate::files::Links::Follow)?;
        let mut first = [0u8; 8];
        let got = file.read(&mut first).map_err(io)?;
        let data_start = header_end(&name, &first[..got], len)?;
        let mut header = vec![0u8; (data_start - 8) as usize];
        file.read_exact(&mut header).map_err(io)?;
        let (entries, _) = parse_header(&name, &header, len - data_start)?;
        Ok(Self { path: path.to_path_buf(), name, data_start, entries })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|e| e.shape.as_slice())
    }

    /// The tensors `picks` names, renamed (and reshaped), as one set named `name`; only their bytes are
    /// read, in file order.
    pub fn read_tensors(&self, name: &str, picks: &[Pick]) -> Result<SafeTensors> {
        use std::io::{Read, Seek, SeekFrom};
        let io = |e: std::io::Error| Error::file(&self.name, format!("cannot read: {e}"));
        let mut ordered: Vec<(&Pick, &Entry)> = Vec::with_capacity(picks.len());
        for pick in picks {
            let e = self.entries.get(&pick.from).ok_or_else(|| Error::tensor(&self.name, &pick.from, "missing from the file"))?;
            if let Some(shape) = &pick.shape
                && shape.iter().product::<usize>() != e.shape.iter().product::<usize>()
            {
                return Err(Error::tensor(&self.name, &pick.from, format!("has shape {:?}, which cannot be read as {shape:?}", e.shape)));
            }
            ordered.push((pick, e));
        }
        ordered.sort_by_key(|(_, e)| e.start);
        let total = ordered.iter().map(|(_, e)| e.end - e.start).sum();
        let mut bytes = vec![0u8; total];
        let (mut file, _) = crate::files::open_regular(&self.path, crate::files::Links::Follow)?;
        let mut entries = BTreeMap::new();
        let mut at = 0;
        for (pick, e) in ordered {
            let len = e.end - e.start;
            file.seek(SeekFrom::Start(self.data_start + e.start as u64)).map_err(io)?;
            file.read_exact(&mut bytes[at..at + len]).map_err(io)?;
            let shape = pick.shape.clone().unwrap_or_else(|| e.shape.clone());
            if entries.insert(pick.to.clone(), Entry { dtype: e.dtype, shape, file: 0, start: at, end: at + len }).is_some() {
                return Err(Error::tensor(&self.name, &pick.from, format!("is the second tensor read as {}", pick.to)));
            }
            at += len;
        }
        let name = name.to_string();
        Ok(SafeTensors { name: name.clone(), files: vec![(name, bytes)], entries, metadata: BTreeMap::new() })
    }
}

/// A view of a weights file under a key prefix (`text_model.` and the like), so that model code asks
/// for `encoder.layers.0.mlp.fc1.weight` whatever the checkpoint's nesting is.
pub struct WeightsView<'a> {
    pub file: &'a SafeTensors,
    pub prefix: String,
    /// Low-rank deltas added to the weights as they are read (Control-CLIP encoders stored as deltas).
    pub deltas: Option<&'a LowRankDeltas>,
    /// The float type [`Self::tensor`] creates weights in on the device (f32 unless [`Self::in_dtype`]).
    pub dtype: FloatDType,
}

impl<'a> WeightsView<'a> {
    pub fn new(file: &'a SafeTensors, prefix: impl Into<String>) -> Self {
        Self { file, prefix: prefix.into(), deltas: None, dtype: FloatDType::F32 }
    }

    pub fn with_deltas(self, deltas: Option<&'a LowRankDeltas>) -> Self {
        Self { deltas, ..self }
    }

    /// Weights created as `dtype` on the device (converted on the host, so f32 copies never reach it).
    pub fn in_dtype(self, dtype: FloatDType) -> Self {
        Self { dtype, ..self }
    }

    pub fn sub(&self, name: &str) -> WeightsView<'a> {
        WeightsView { file: self.file, prefix: format!("{}{}.", self.prefix, name), deltas: self.deltas, dtype: self.dtype }
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.file.contains(&self.key(name))
    }

    /// A float tensor widened to f32 with its shape, deltas applied.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let key = self.key(name);
        let (shape, mut values) = self.file.f32(&key)?;
        if let Some(deltas) = self.deltas {
            deltas.apply(&key, &shape, &mut values)?;
        }
        Ok((shape, values))
    }

    /// [`Self::f32`] of a tensor that must have exactly `shape` (refused by file and tensor otherwise).
    pub fn f32_of(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (found, values) = self.f32(name)?;
        if found != shape {
            let key = self.key(name);
            return Err(Error::tensor(self.file.file_of(&key), &key, format!("expected shape {shape:?}, found {found:?}")));
        }
        Ok(values)
    }

    /// Refuses `name` when one buffer binding of `device` cannot hold `elements` values of this view's
    /// dtype ([`check_binding`]).
    pub fn check_binding(&self, name: &str, elements: usize, device: &Device) -> Result<()> {
        let key = self.key(name);
        check_binding(self.file.file_of(&key), &key, elements, self.dtype, device)
    }

    /// `values` of `shape` as a tensor of this view's dtype on `device`.
    pub fn create<const D: usize>(&self, values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), (device, TensorDType::from(self.dtype)))
    }

    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D], device: &Device) -> Result<Tensor<D>> {
        let values = self.f32_of(name, &shape)?;
        self.check_binding(name, values.len(), device)?;
        Ok(self.create(values, shape, device))
    }

    /// [`Self::tensor`] in f32 whatever the view's dtype: normalisation parameters, which apply where the
    /// statistics are computed (in f32).
    pub fn tensor_f32<const D: usize>(&self, name: &str, shape: [usize; D], device: &Device) -> Result<Tensor<D>> {
        WeightsView { prefix: self.prefix.clone(), dtype: FloatDType::F32, ..*self }.tensor(name, shape, device)
    }
}

/// Refuses a weight of `elements` f32 values that one buffer binding of `device` cannot hold
/// ([`crate::device::binding_limit`]), naming the tensor: loading it would fail, or give black images,
/// at its first use instead. (The token embedding, the one large weight that a lookup reads row by row,
/// is split instead: `models::clip`.)
pub fn check_binding(file: &str, key: &str, elements: usize, dtype: FloatDType, device: &Device) -> Result<()> {
    let bytes = elements as u64 * TensorDType::from(dtype).size() as u64;
    match crate::device::binding_limit(device) {
        Some(limit) if bytes > limit => Err(Error::tensor(
            file,
            key,
            format!(
                "{bytes} bytes as {}, over this device's largest buffer binding ({limit} bytes, its maxStorageBufferBindingSize)",
                format!("{dtype:?}").to_ascii_lowercase()
            ),
        )),
        _ => Ok(()),
    }
}

/// Row-major [rows, cols] → [cols, rows]: PyTorch keeps linear weights [out, in], burn's matmuls want
/// [in, out].
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// One tensor to write: name, dtype, shape and its little-endian bytes.
pub struct RawTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        Self { name: name.into(), dtype: DType::F32, shape, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }
}

impl SafeTensors {
    /// Every tensor of the file as stored (dtype, shape, bytes), in name order.
    /// One tensor's bytes as stored (a copy of that tensor only).
    pub fn raw_tensor(&self, key: &str) -> Result<RawTensor> {
        let e = self.entry(key)?;
        Ok(RawTensor { name: key.to_string(), dtype: e.dtype, shape: e.shape.clone(), bytes: self.data(e).1.to_vec() })
    }

    /// The size of a tensor's data as stored, in bytes.
    pub fn data_len(&self, key: &str) -> Result<usize> {
        let e = self.entry(key)?;
        Ok(e.end - e.start)
    }

    pub fn raw_tensors(&self) -> Vec<RawTensor> {
        self.entries
            .iter()
            .map(|(name, e)| RawTensor {
                name: name.clone(),
                dtype: e.dtype,
                shape: e.shape.clone(),
                bytes: self.data(e).1.to_vec(),
            })
            .collect()
    }
}

/// Serializes tensors in the safetensors format (header padded to 8 bytes, as the reference writer does).
pub fn serialize(tensors: &[RawTensor]) -> Vec<u8> {
    serialize_with_metadata(tensors, &[])
}

/// [`serialize`] with `__metadata__` entries.
pub fn serialize_with_metadata(tensors: &[RawTensor], metadata: &[(&str, String)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone()))).collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let mut offset = 0usize;
    for t in tensors {
        let dtype = match t.dtype {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
        };
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.len()]}),
        );
        offset += t.bytes.len();
    }
    let mut header = serde_json::to_vec(&header).expect("header serializes");
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for t in tensors {
        out.extend_from_slice(&t.bytes);
    }
    out
}

/// The weights of a model folder ([`find_weights_file_variant`]): one safetensors file, or the shards an
/// index (`*.safetensors.index.json`, as `save_pretrained` writes a large model) lists, read as one set.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_weights(dir: &std::path::Path, variant: Option<&str>) -> Result<SafeTensors> {
    let path = find_weights_file_variant(dir, variant)?;
    if !path.to_string_lossy().ends_with(".json") {
        return SafeTensors::read(&path);
    }
    let index = crate::config::ConfigJson::read(&path)?;
    let map = index.object.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::config(&index.file, "weight_map", "missing or not an object of tensor → file"))?;
    let mut files: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().filter(|f| !f.is_empty() && !f.contains(['/', '\\']) && *f != "..").ok_or_else(|| {
            Error::config(&index.file, format!("weight_map.{tensor}"), "must name a file in the same folder")
        })?;
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files.sort();
    let shards = files.iter().map(|f| SafeTensors::read(&dir.join(f))).collect::<Result<Vec<_>>>()?;
    let set = SafeTensors::from_shards(path.display().to_string(), shards)?;
    for (tensor, file) in map {
        let file = dir.join(file.as_str().unwrap_or_default()).display().to_string();
        if set.file_of(tensor) != file {
            return Err(Error::tensor(&file, tensor, format!("missing: {} lists it in this file", index.file)));
        }
    }
    Ok(set)
}

/// The weights file of a model folder, or of one of its weight variants (`--variant fp16`:
/// `diffusion_pytorch_model.fp16.safetensors`, as diffusers' `save_pretrained(variant=…)` names them), or
/// its shards' index. A folder with only pickled weights (`*.bin`) is refused with what to run instead:
/// pickles can run code when loaded, so they are never read.
#[cfg(not(target_arch = "wasm32"))]
pub fn find_weights_file_variant(dir: &std::path::Path, variant: Option<&str>) -> Result<std::path::PathBuf> {
    const STEMS: [&str; 3] = ["model", "diffusion_pytorch_model", "adapter_model"];
    let names: Vec<String> = match variant {
        Some(v) => STEMS.iter().map(|s| format!("{s}.{v}.safetensors")).collect(),
        None => ["model.safetensors", "diffusion_pytorch_model.safetensors", "model.fp16.safetensors", "adapter_model.safetensors"].map(String::from).to_vec(),
    };
    if let Some(found) = names.iter().map(|n| dir.join(n)).find(|p| p.exists()) {
        return Ok(found);
    }
    // Sharded: `save_pretrained` names the index `<stem>.safetensors.index[.<variant>].json`.
    let index = |s: &&str| match variant {
        Some(v) => format!("{s}.safetensors.index.{v}.json"),
        None => format!("{s}.safetensors.index.json"),
    };
    if let Some(found) = STEMS.iter().map(index).map(|n| dir.join(n)).find(|p| p.exists()) {
        return Ok(found);
    }
    let listing: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let folder = dir.display().to_string();
    if let Some(pickle) = listing.iter().find(|f| f.ends_with(".bin") || f.ends_with(".ckpt") || f.ends_with(".pt")) {
        return Err(Error::file(
            folder,
            format!(
                "holds pickled PyTorch weights ({pickle}) and no safetensors file: control-clip never loads pickles (they can run code). \
                 Convert them once with the library that saved them, e.g. `python -c \"from diffusers import UNet2DConditionModel as M; \
                 M.from_pretrained('DIR').save_pretrained('DIR', safe_serialization=True)\"` (transformers' CLIPTextModel likewise)"
            ),
        ));
    }
    let variants: Vec<&String> = listing.iter().filter(|f| f.ends_with(".safetensors") && f.matches('.').count() == 2 && !f.contains("-of-")).collect();
    if variant.is_none() && !variants.is_empty() {
        let v: Vec<&str> = variants.iter().filter_map(|f| f.split('.').nth(1)).collect();
        return Err(Error::file(folder, format!("holds only weight variants ({}): choose one with --variant {}", variants.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "), v[0])));
    }
    Err(Error::file(folder, format!("no weights file in the folder (looked for {})", names.join(", "))))
}

/// A model folder as transformers / diffusers save it: its config.json and its weights file.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_model_dir(dir: &std::path::Path) -> Result<(crate::config::ConfigJson, SafeTensors)> {
    let config = crate::config::ConfigJson::read(&dir.join("config.json"))?;
    Ok((config, read_weights(dir, None)?))
}
