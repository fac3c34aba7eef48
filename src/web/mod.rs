//! The wasm-bindgen API (thin): everything here converts between JS values and the library's types.
//! Every failure becomes a JS `Error` whose message names the problem; panics are reported by
//! `console_error_panic_hook` but the API returns errors instead of panicking wherever it can.

use js_sys::{Float32Array, Object, Reflect, Uint32Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::check;
use crate::config::ConfigJson;
use crate::device::{BackendKind, init_device, read_f32};
use crate::error::Error;
use crate::models::ModelFolder;
use crate::models::clip::ClipTextModel;
use crate::models::unet::UNet2DConditionModel;
use crate::tokenizer::ClipTokenizer;
use crate::weights::SafeTensors;

fn js_err(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

/// A generation's failure as a JS Error; a cancelled one is named "AbortError" (the DOM's name for an
/// aborted operation), so that callers tell a cancel from a failure by its type, never by its text.
fn generate_err(e: Error) -> JsValue {
    match e {
        Error::Cancelled => {
            let error = js_sys::Error::new(&e.to_string());
            error.set_name("AbortError");
            error.into()
        }
        e => js_err(e).into(),
    }
}

fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(obj, &JsValue::from_str(key), &value.into());
}

unsafe extern "C" {
    /// Runs the module's static constructors (cubecl's `pliron` registers some through `inventory`).
    fn __wasm_call_ctors();
}

/// Runs once when the module is instantiated. Calling the constructors from an exported function makes
/// the linker treat the module as a library ("reactor"): otherwise it wraps *every* export in a
/// constructor/destructor call, and strings with non-ASCII characters arrived in Rust empty.
#[wasm_bindgen(start)]
pub fn start() {
    // SAFETY: called once, by wasm-bindgen's start hook, before any other export.
    unsafe { __wasm_call_ctors() };
    console_error_panic_hook::set_once();
}

/// Starts the backend (`"wgpu"` or `"cpu"`) once per page; later calls return the same device.
#[wasm_bindgen(js_name = initBackend)]
pub async fn init_backend(backend: String) -> Result<String, JsError> {
    let kind: BackendKind = backend.parse().map_err(js_err)?;
    init_device(kind).await.map_err(js_err)?;
    Ok(kind.name().to_string())
}

/// The CLIP tokenizer, from the bytes of a tokenizer.json.
#[wasm_bindgen]
pub struct Tokenizer {
    inner: ClipTokenizer,
}

#[wasm_bindgen]
impl Tokenizer {
    #[wasm_bindgen(constructor)]
    pub fn new(name: &str, bytes: &[u8]) -> Result<Tokenizer, JsError> {
        Ok(Tokenizer { inner: ClipTokenizer::from_bytes(name, bytes).map_err(js_err)? })
    }

    /// From a diffusers pipeline's `tokenizer/` files: `vocab.json` and `merges.txt` bytes, and the text of
    /// `tokenizer_config.json` / `special_tokens_map.json` (either may be empty: transformers' defaults).
    #[wasm_bindgen(js_name = fromVocab)]
    pub fn from_vocab(vocab: &[u8], merges: &[u8], tokenizer_config: &str, special_tokens_map: &str) -> Result<Tokenizer, JsError> {
        let mut special = crate::tokenizer::SpecialTokens::default();
        for (name, text) in [("tokenizer_config.json", tokenizer_config), ("special_tokens_map.json", special_tokens_map)] {
            if !text.is_empty() {
                special = special.with_json(name, text.as_bytes()).map_err(js_err)?;
            }
        }
        Ok(Tokenizer { inner: ClipTokenizer::from_vocab(("vocab.json", vocab), ("merges.txt", merges), &special).map_err(js_err)? })
    }

    /// `{ids: Uint32Array(77), droppedTokens, notice}`; `notice` is null unless the prompt was truncated.
    pub fn encode(&self, prompt: &str) -> Result<Object, JsError> {
        let t = self.inner.encode(prompt, crate::tokenizer::MAX_POSITIONS).map_err(js_err)?;
        let out = Object::new();
        set(&out, "ids", Uint32Array::from(t.ids.as_slice()));
        set(&out, "droppedTokens", t.dropped_tokens as u32);
        set(&out, "notice", t.truncation_notice().map_or(JsValue::NULL, |n| JsValue::from_str(&n)));
        Ok(out)
    }
}

/// A CLIP text encoder loaded from a model folder's `config.json` text and weights bytes.
/// (Not called `TextEncoder` in JS: that would shadow the browser's own class inside the glue code.)
#[wasm_bindgen]
pub struct ClipTextEncoder {
    model: ClipTextModel,
}

#[wasm_bindgen]
impl ClipTextEncoder {
    /// `backend` must have been started with `initBackend`. `folder` names the files in errors.
    pub async fn load(backend: String, folder: String, config_json: String, weights: Vec<u8>) -> Result<ClipTextEncoder, JsError> {
        let kind: BackendKind = backend.parse().map_err(js_err)?;
        let device = init_device(kind).await.map_err(js_err)?;
        let config = ConfigJson::parse(format!("{folder}/config.json"), &config_json).map_err(js_err)?;
        let weights = SafeTensors::from_bytes(format!("{folder}/model.safetensors"), weights).map_err(js_err)?;
        let model = ClipTextModel::load(&config, &weights, &device).map_err(js_err)?;
        Ok(ClipTextEncoder { model })
    }

    /// Runs the encoder on `batch` rows of ids (flattened). Returns `{lastHiddenState, poolerOutput,
    /// textEmbeds (or null), shape: [batch, positions, hidden]}` with Float32Arrays.
    pub async fn encode(&self, ids: Vec<u32>, batch: usize, clip_skip: usize) -> Result<Object, JsError> {
        if batch == 0 || ids.len() % batch != 0 {
            return Err(js_err(Error::invalid("ids", format!("{} ids do not split into {batch} rows", ids.len()))));
        }
        let rows: Vec<Vec<u32>> = ids.chunks(ids.len() / batch).map(<[u32]>::to_vec).collect();
        let out = self.model.forward(&rows, clip_skip).map_err(js_err)?;
        let (shape, hidden) = read_f32(out.last_hidden_state).await.map_err(js_err)?;
        let (_, pooled) = read_f32(out.pooler_output).await.map_err(js_err)?;
        let embeds = match out.text_embeds {
            Some(t) => Some(read_f32(t).await.map_err(js_err)?.1),
            None => None,
        };
        let result = Object::new();
        set(&result, "lastHiddenState", Float32Array::from(hidden.as_slice()));
        set(&result, "poolerOutput", Float32Array::from(pooled.as_slice()));
        set(&result, "textEmbeds", embeds.map_or(JsValue::NULL, |e| Float32Array::from(e.as_slice()).into()));
        set(&result, "shape", shape.iter().map(|&d| JsValue::from(d as u32)).collect::<js_sys::Array>());
        Ok(result)
    }
}


/// Checks a model against reference outputs, as `control-clip check` does natively (the same table,
/// `check::Component`): `component` is its name (`text-encoder`, `unet`, `control-unet`, …); `config_json`
/// and `weights` are the model folder's files (no weights for `scheduler`, whose config is its
/// scheduler_config.json), `io` the reference safetensors. Returns `{component, maxAbsErr, maxRelErr,
/// tolerance, pass, outputs: [{name, maxAbsErr, maxRelErr}]}`.
#[wasm_bindgen(js_name = checkModel)]
#[allow(clippy::too_many_arguments)]
pub async fn check_model(
    backend: String,
    component: String,
    folder: String,
    config_json: String,
    weights: Option<Vec<u8>>,
    io: Vec<u8>,
    tolerance: f32,
) -> Result<Object, JsError> {
    let component: check::Component = component.parse().map_err(js_err)?;
    let kind: BackendKind = backend.parse().map_err(js_err)?;
    let device = init_device(kind).await.map_err(js_err)?;
    let config = ConfigJson::parse(format!("{folder}/{}", component.config_file()), &config_json).map_err(js_err)?;
    let weights = weights.map(|w| SafeTensors::from_bytes(format!("{folder}/weights"), w)).transpose().map_err(js_err)?;
    let io = SafeTensors::from_bytes(format!("{folder}/io"), io).map_err(js_err)?;
    let report = check::run(component, &config, weights.as_ref(), &io, &device, tolerance).await.map_err(js_err)?;
    Ok(report_object(&report))
}

/// A check report as `{component, maxAbsErr, maxRelErr, tolerance, pass, outputs: [{name, maxAbsErr, maxRelErr}]}`.
fn report_object(report: &check::CheckReport) -> Object {
    let errors = |o: &Object, max_abs: f32, max_rel: f32| {
        set(o, "maxAbsErr", max_abs);
        set(o, "maxRelErr", max_rel);
    };
    let out = Object::new();
    set(&out, "component", report.component.as_str());
    errors(&out, report.max_abs_err, report.max_rel_err);
    set(&out, "tolerance", report.tolerance);
    set(&out, "pass", report.pass);
    let outputs = report.outputs.iter().map(|e| {
        let o = Object::new();
        set(&o, "name", e.name.as_str());
        errors(&o, e.max_abs_err, e.max_rel_err);
        JsValue::from(o)
    });
    set(&out, "outputs", outputs.collect::<js_sys::Array>());
    out
}

/// One UNet loaded once and run repeatedly on one reference io file (`sample`, `timestep`,
/// `encoder_hidden_states`, `out`): the browser benchmark times `step` beside a peer runtime running the
/// same weights on the same inputs (tests/browser/bench_peer.mjs). Not used by the page.
#[wasm_bindgen]
pub struct UnetBench {
    model: UNet2DConditionModel,
    io: SafeTensors,
}

#[wasm_bindgen]
impl UnetBench {
    /// `backend` must have been started with `initBackend`; `folder` names the files in errors.
    pub async fn load(backend: String, folder: String, config_json: String, weights: Vec<u8>, io: Vec<u8>) -> Result<UnetBench, JsError> {
        let kind: BackendKind = backend.parse().map_err(js_err)?;
        let device = init_device(kind).await.map_err(js_err)?;
        let config = ConfigJson::parse(format!("{folder}/config.json"), &config_json).map_err(js_err)?;
        let weights = SafeTensors::from_bytes(format!("{folder}/diffusion_pytorch_model.safetensors"), weights).map_err(js_err)?;
        let model = UNet2DConditionModel::from_parts(&config, &weights, &device).map_err(js_err)?;
        let io = SafeTensors::from_bytes(format!("{folder}/io.safetensors"), io).map_err(js_err)?;
        Ok(UnetBench { model, io })
    }

    /// One forward pass on the io file's inputs, read back and compared with its `out` (the check report
    /// of `checkModel`; the comparison is a few microseconds beside the pass). With `profile`, the report
    /// also has `breakdownMs`: `{conv, norm, attention, linear}` milliseconds of this pass (the CPU backend's
    /// operations run when called, so these are their real times).
    pub async fn step(&self, tolerance: f32, profile: bool) -> Result<Object, JsError> {
        crate::profile::enable(profile);
        let report = check::check_unet(&self.model, &self.io, tolerance).await;
        let parts = crate::profile::totals_ms();
        crate::profile::enable(false);
        let out = report_object(&report.map_err(js_err)?);
        if profile {
            let breakdown = Object::new();
            for (section, ms) in parts {
                set(&breakdown, section.name(), ms);
            }
            set(&out, "breakdownMs", breakdown);
        }
        Ok(out)
    }
}

/// A bundle's manifest, parsed and checked by the library (`bundle::Manifest`, the one definition of the
/// format): the worker lists, verifies and describes the bundle's files through it.
#[wasm_bindgen]
pub struct BundleManifest {
    inner: crate::bundle::Manifest,
}

#[wasm_bindgen]
impl BundleManifest {
    /// `origin` names the bundle in messages (its URL without `/manifest.json`, or "chosen files").
    #[wasm_bindgen(constructor)]
    pub fn new(origin: &str, text: &str) -> Result<BundleManifest, JsError> {
        Ok(BundleManifest { inner: crate::bundle::Manifest::parse(origin, text).map_err(js_err)? })
    }

    /// Every file but the manifest: `[{file, sha256, bytes}]`.
    pub fn files(&self) -> js_sys::Array {
        self.inner
            .components
            .files()
            .into_iter()
            .map(|f| {
                let o = Object::new();
                set(&o, "file", f.file.as_str());
                set(&o, "sha256", f.sha256.as_str());
                set(&o, "bytes", f.bytes as f64);
                JsValue::from(o)
            })
            .collect()
    }

    /// Checks a file against the manifest, given its length and hex sha256 (the worker hashes
    /// with `crypto.subtle`); throws an Error naming the file when it is truncated, corrupt or unlisted.
    pub fn verify(&self, name: &str, length: f64, sha256: &str) -> Result<(), JsError> {
        let file = self.inner.file(name).map_err(js_err)?;
        self.inner.verify_digest(file, length as u64, sha256).map_err(js_err)
    }

    /// What the page shows: `{name, licence, bytes, defaults: {prompt, steps, guidance, width, height,
    /// category_weight, style_weight} (those the bundle gives), control: [names of the Control-CLIP
    /// components it has]}`.
    pub fn info(&self) -> Result<JsValue, JsError> {
        let m = &self.inner;
        let out = Object::new();
        set(&out, "name", m.name.as_deref().unwrap_or("unnamed model"));
        set(&out, "licence", m.licence.as_deref().unwrap_or("unknown"));
        set(&out, "bytes", m.components.files().iter().map(|f| f.bytes as f64).sum::<f64>());
        let defaults = js_sys::JSON::parse(&serde_json::to_string(&m.defaults).map_err(|e| JsError::new(&e.to_string()))?)
            .map_err(|_| JsError::new("the defaults did not convert"))?;
        set(&out, "defaults", defaults);
        let control = crate::bundle::component::CONTROL.iter().filter(|c| m.components.weights(c).is_some()).map(|c| JsValue::from_str(c));
        set(&out, "control", control.collect::<js_sys::Array>());
        Ok(out.into())
    }
}

/// Reads an optional field of a JS options object.
fn field(options: &JsValue, name: &str) -> Option<JsValue> {
    Reflect::get(options, &JsValue::from_str(name)).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

fn number_field(options: &JsValue, name: &str) -> Result<Option<f64>, JsError> {
    field(options, name)
        .map(|v| v.as_f64().ok_or_else(|| js_err(Error::invalid(name, format!("{v:?} is not a number")))))
        .transpose()
}

fn count_field(options: &JsValue, name: &str) -> Result<Option<usize>, JsError> {
    match number_field(options, name)? {
        Some(v) if v < 0.0 || v.fract() != 0.0 || !v.is_finite() => Err(js_err(Error::invalid(name, format!("{v} is not a whole number ≥ 0")))),
        v => Ok(v.map(|v| v as usize)),
    }
}

fn string_field(options: &JsValue, name: &str) -> Result<Option<String>, JsError> {
    field(options, name)
        .map(|v| v.as_string().ok_or_else(|| js_err(Error::invalid(name, format!("{v:?} is not a string")))))
        .transpose()
}

struct GeneratorInner {
    pipeline: crate::pipeline::Pipeline,
    manifest: crate::bundle::Manifest,
    cancel: std::cell::Cell<bool>,
}

/// Plans every buffer within `bytes` (0: the device's own limit), as on a device whose
/// `maxStorageBufferBindingSize` is that small: the page's `?maxBinding=` (see `device::cap_bindings`).
#[wasm_bindgen(js_name = capBindings)]
pub fn cap_bindings(bytes: f64) -> Result<(), JsError> {
    if !(bytes >= 0.0 && bytes.fract() == 0.0 && bytes <= 9_007_199_254_740_991.0) {
        return Err(js_err(Error::invalid("maxBinding", format!("{bytes} is not a whole number of bytes"))));
    }
    crate::device::cap_bindings(bytes as u64);
    Ok(())
}

/// The memory plan of `manifest` at a size, refused when it does not fit the device (before any weights
/// are fetched, at load, and before each generation at its own size).
fn check_plan(
    manifest: &crate::bundle::Manifest,
    device: &burn::tensor::Device,
    (width, height): (usize, usize),
    guided: bool,
    precision: crate::device::Precision,
) -> Result<crate::plan::MemoryPlan, Error> {
    let plan = crate::plan::MemoryPlan::new(manifest, width, height, guided, precision)?;
    if let Some(limit) = crate::device::binding_limit(device) {
        plan.check(limit)?;
    }
    Ok(plan)
}

/// A loaded bundle, ready to generate. Built by `Generator.load`; `generate` returns a Promise and can be
/// stopped between steps by `cancel()`; `free()` (wasm-bindgen's) releases the model and its GPU memory.
#[wasm_bindgen]
pub struct Generator {
    inner: std::rc::Rc<GeneratorInner>,
}

#[wasm_bindgen]
impl Generator {
    /// Builds the generator from a bundle's manifest; `fetch(name)` returns a Promise of the file's bytes
    /// (Uint8Array), verified with `manifest.verify` (the page streams, verifies and caches them; they are
    /// not hashed again here). `precision`: "auto" (the default: f16 where the adapter has `shader-f16`),
    /// "f32" or "f16" (refused on a device without it). Resolves to a `Generator`.
    pub fn load(backend: String, manifest: &BundleManifest, fetch: js_sys::Function, precision: Option<String>) -> js_sys::Promise {
        let manifest = manifest.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let kind: BackendKind = backend.parse().map_err(js_err)?;
            let device = init_device(kind).await.map_err(js_err)?;
            let request: crate::device::PrecisionRequest = precision.as_deref().unwrap_or("auto").parse().map_err(js_err)?;
            let precision = crate::device::Precision::resolve(request, &device).map_err(js_err)?;
            // The size the page starts at: a bundle that cannot fit it is refused before any download.
            let (width, height) = (manifest.defaults.width.unwrap_or(512), manifest.defaults.height.unwrap_or(512));
            check_plan(&manifest, &device, (width, height), true, precision).map_err(js_err)?;
            let fetch = |file: crate::bundle::BundleFile| {
                let promise = fetch.call1(&JsValue::NULL, &JsValue::from_str(&file.file));
                let path = manifest.path(&file.file);
                async move {
                    // The page's own messages already start with the file's URL: do not say it twice.
                    let failed = |e: JsValue| {
                        let message = js_message(&e);
                        let message = message.strip_prefix(&format!("{path}: ")).map(str::to_string).unwrap_or(message);
                        Error::file(&path, message)
                    };
                    let value = wasm_bindgen_futures::JsFuture::from(js_sys::Promise::resolve(&promise.map_err(failed)?)).await.map_err(failed)?;
                    Ok(js_sys::Uint8Array::new(&value).to_vec())
                }
            };
            let pipeline = crate::pipeline::Pipeline::from_bundle(&manifest, fetch, &device, precision).await.map_err(js_err)?;
            let inner = GeneratorInner { pipeline, manifest: manifest.clone(), cancel: std::cell::Cell::new(false) };
            Ok(Generator { inner: std::rc::Rc::new(inner) }.into())
        })
    }

    /// `options`: {prompt, negativePrompt, categoryWeight, styleWeight, steps, guidance, seed, scheduler,
    /// width, height, preview} (all but `prompt` optional); `on_step({step, total, stepMs, elapsedMs,
    /// preview})` after every step, where `preview` is `{width, height, rgba: Uint8ClampedArray}` (a
    /// low-resolution decode of the step's estimate, when `preview: true` and the bundle's decoder is the
    /// tiny one) or null. Resolves to {width, height, rgba: Uint8ClampedArray, notices: [string]}; rejects with an Error
    /// (named "AbortError" after `cancel()`).
    pub fn generate(&self, options: JsValue, on_step: Option<js_sys::Function>) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let req = request_from(&options)?;
            inner.pipeline.validate(&req).map_err(generate_err)?;
            let pipeline = &inner.pipeline;
            check_plan(&inner.manifest, &pipeline.device, (req.width, req.height), req.guidance > 1.0, pipeline.precision).map_err(generate_err)?;
            inner.cancel.set(false);
            let mut progress = |p: crate::pipeline::StepProgress| {
                if let Some(f) = &on_step {
                    let o = Object::new();
                    set(&o, "step", p.step as u32);
                    set(&o, "total", p.total as u32);
                    set(&o, "stepMs", p.step_ms);
                    set(&o, "elapsedMs", p.elapsed_ms);
                    let preview = p.preview.map_or(JsValue::NULL, |image| {
                        let v = Object::new();
                        set(&v, "width", image.width as u32);
                        set(&v, "height", image.height as u32);
                        set(&v, "rgba", js_sys::Uint8ClampedArray::from(image.rgba.as_slice()));
                        v.into()
                    });
                    set(&o, "preview", preview);
                    let _ = f.call1(&JsValue::NULL, &o);
                }
                !inner.cancel.get()
            };
            let image = inner.pipeline.generate(&req, &mut progress).await.map_err(generate_err)?;
            let out = Object::new();
            set(&out, "width", image.width as u32);
            set(&out, "height", image.height as u32);
            set(&out, "rgba", js_sys::Uint8ClampedArray::from(image.rgba.as_slice()));
            set(&out, "notices", image.notices.iter().map(|n| JsValue::from_str(n)).collect::<js_sys::Array>());
            Ok(out.into())
        })
    }

    /// The memory plan at a size: `{weightsBytes, activationBytes, totalBytes, largestBinding, limit}`
    /// (`largestBinding`: the largest buffer bound after splitting, under `limit`, the device's largest
    /// binding; both null on the CPU backend). The worker's `stats` measure the same beside it.
    pub fn plan(&self, width: usize, height: usize, guided: bool) -> Result<Object, JsError> {
        let plan = crate::plan::MemoryPlan::new(&self.inner.manifest, width, height, guided, self.inner.pipeline.precision).map_err(js_err)?;
        let limit = crate::device::binding_limit(&self.inner.pipeline.device);
        let out = Object::new();
        set(&out, "weightsBytes", plan.weights_bytes() as f64);
        set(&out, "activationBytes", plan.activations as f64);
        set(&out, "totalBytes", plan.total_bytes() as f64);
        set(&out, "largestBinding", limit.map_or(JsValue::NULL, |l| JsValue::from(plan.largest_binding(l) as f64)));
        set(&out, "limit", limit.map_or(JsValue::NULL, |l| JsValue::from(l as f64)));
        Ok(out)
    }

    /// What the models compute in: "f32" or "f16".
    #[wasm_bindgen(getter)]
    pub fn precision(&self) -> String {
        self.inner.pipeline.precision.name().to_string()
    }

    /// Stops a running generation after its current step.
    pub fn cancel(&self) {
        self.inner.cancel.set(true);
    }
}

fn js_message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).or_else(|| e.as_string()).unwrap_or_else(|| format!("{e:?}"))
}

fn request_from(options: &JsValue) -> Result<crate::pipeline::GenerateRequest, JsValue> {
    use crate::pipeline::GenerateRequest;
    let prompt = string_field(options, "prompt")?.ok_or_else(|| js_err(Error::invalid("prompt", "missing")))?;
    let mut req = GenerateRequest::new(prompt);
    if let Some(v) = string_field(options, "negativePrompt")? {
        req.negative_prompt = v;
    }
    if let Some(v) = count_field(options, "steps")? {
        req.steps = v;
    }
    if let Some(v) = number_field(options, "guidance")? {
        req.guidance = v as f32;
    }
    if let Some(v) = number_field(options, "seed")? {
        if !(v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_991.0) {
            return Err(js_err(Error::invalid("seed", format!("{v} is not a whole number between 0 and 2^53 - 1"))).into());
        }
        req.seed = v as u64;
    }
    if let Some(v) = count_field(options, "width")? {
        req.width = v;
    }
    if let Some(v) = count_field(options, "height")? {
        req.height = v;
    }
    if let Some(v) = field(options, "preview") {
        req.preview = v.as_bool().ok_or_else(|| js_err(Error::invalid("preview", format!("{v:?} is not true or false"))))?;
    }
    if let Some(v) = string_field(options, "scheduler")? {
        req.scheduler = Some(v.parse().map_err(js_err)?);
    }
    let weight = |name: &str, default: f32| -> Result<f32, JsError> { Ok(number_field(options, name)?.map_or(default, |v| v as f32)) };
    req.control = crate::control::ControlWeights::new(weight("categoryWeight", 1.0)?, weight("styleWeight", 0.0)?).map_err(js_err)?;
    Ok(req)
}
