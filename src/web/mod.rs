//! The wasm-bindgen API (thin): everything here converts between JS values and the library's types.
//! Every failure becomes a JS `Error` whose message names the problem; panics are reported by
//! `console_error_panic_hook` but the API returns errors instead of panicking wherever it can.

use js_sys::{Float32Array, Object, Reflect, Uint32Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::config::ConfigJson;
use crate::device::{BackendKind, init_device, read_f32};
use crate::error::Error;
use crate::models::clip::ClipTextModel;
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


/// Checks a model against reference outputs, as `control-clip check` does natively: `component` is one of
/// `text-encoder`, `unet`, `control-unet`, `control-identity`, `cross-attention`, `vae-decoder`,
/// `tiny-decoder`; `config_json` and `weights` are the model folder's files, `io` the reference
/// safetensors. Returns `{component, maxAbsErr, maxRelErr, tolerance, pass}`.
#[wasm_bindgen(js_name = checkModel)]
#[allow(clippy::too_many_arguments)]
pub async fn check_model(
    backend: String,
    component: String,
    folder: String,
    config_json: String,
    weights: Vec<u8>,
    io: Vec<u8>,
    tolerance: f32,
) -> Result<Object, JsError> {
    use crate::check;
    use crate::models::unet::UNet2DConditionModel;

    let kind: BackendKind = backend.parse().map_err(js_err)?;
    let device = init_device(kind).await.map_err(js_err)?;
    let config = ConfigJson::parse(format!("{folder}/config.json"), &config_json).map_err(js_err)?;
    let weights = SafeTensors::from_bytes(format!("{folder}/weights"), weights).map_err(js_err)?;
    let io = SafeTensors::from_bytes(format!("{folder}/io"), io).map_err(js_err)?;
    let report = async {
        match component.as_str() {
            "text-encoder" => check::check_text_encoder(&ClipTextModel::load(&config, &weights, &device)?, &io, tolerance).await,
            "unet" => check::check_unet(&UNet2DConditionModel::load(&config, &weights, &device)?, &io, tolerance).await,
            "control-unet" => check::check_control_unet(&UNet2DConditionModel::load(&config, &weights, &device)?, &io, tolerance).await,
            "control-identity" => check::check_control_identity(&UNet2DConditionModel::load(&config, &weights, &device)?, &io, tolerance).await,
            "cross-attention" => {
                let layer = crate::models::unet::transformer::Attention::load_layer(&config, &weights, &device)?;
                check::check_cross_attention(&layer, &io, tolerance).await
            }
            "vae-decoder" => check::check_vae_decoder(&crate::models::vae::VaeDecoder::load(&config, &weights, &device)?, &io, tolerance).await,
            "tiny-decoder" => check::check_tiny_decoder(&crate::models::taesd::TinyDecoder::load(&config, &weights, &device)?, &io, tolerance).await,
            other => Err(Error::invalid("component", format!("unknown component `{other}`"))),
        }
    }
    .await
    .map_err(js_err)?;
    let out = Object::new();
    set(&out, "component", report.component.as_str());
    set(&out, "maxAbsErr", report.max_abs_err);
    set(&out, "maxRelErr", report.max_rel_err);
    set(&out, "tolerance", report.tolerance);
    set(&out, "pass", report.pass);
    Ok(out)
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
    cancel: std::cell::Cell<bool>,
}

/// A loaded bundle, ready to generate. Built by `Generator.load`; `generate` returns a Promise and can be
/// stopped between steps by `cancel()`; `free()` (wasm-bindgen's) releases the model and its GPU memory.
#[wasm_bindgen]
pub struct Generator {
    inner: std::rc::Rc<GeneratorInner>,
}

#[wasm_bindgen]
impl Generator {
    /// `origin` names the bundle in messages (its URL or "dropped files"); `manifest_json` is its
    /// manifest.json; `fetch(name)` returns a Promise of the file's bytes (Uint8Array): the page streams,
    /// verifies and caches them. Every file is checked against the manifest's size and sha256 again here.
    pub async fn load(backend: String, origin: String, manifest_json: String, fetch: js_sys::Function) -> Result<Generator, JsError> {
        let kind: BackendKind = backend.parse().map_err(js_err)?;
        let device = init_device(kind).await.map_err(js_err)?;
        let manifest = crate::bundle::Manifest::parse(&origin, &manifest_json).map_err(js_err)?;
        let fetch = |name: String| {
            let promise = fetch.call1(&JsValue::NULL, &JsValue::from_str(&name));
            let origin = origin.clone();
            async move {
                let path = format!("{origin}/{name}");
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
        let pipeline = crate::pipeline::Pipeline::from_bundle(&manifest, fetch, &device).await.map_err(js_err)?;
        Ok(Generator { inner: std::rc::Rc::new(GeneratorInner { pipeline, cancel: std::cell::Cell::new(false) }) })
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
