//! The wasm-bindgen API (thin): everything here converts between JS values and the library's types.
//! Every failure becomes a JS `Error` whose message names the problem; panics are reported by
//! `console_error_panic_hook` but the API returns errors instead of panicking wherever it can.

use js_sys::{Float32Array, Object, Reflect, Uint32Array};
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
