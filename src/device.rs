//! Choosing and starting the compute backend: burn's wgpu backend (Vulkan / Metal / DX12 natively,
//! WebGPU in the browser) or burn's pure-Rust CPU backend (`flex`).

use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Wgpu,
    Cpu,
}

impl BackendKind {
    pub const ALL: [BackendKind; 2] = [BackendKind::Wgpu, BackendKind::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "wgpu" | "webgpu" | "gpu" => Ok(BackendKind::Wgpu),
            "cpu" | "flex" => Ok(BackendKind::Cpu),
            other => Err(Error::invalid("backend", format!("unknown backend `{other}` (expected wgpu or cpu)"))),
        }
    }
}

/// Starts (once per process) and returns the device of `kind`. burn's wgpu runtime can be initialised
/// only once, so the result — device or error — is kept for the life of the process / page.
pub async fn init_device(kind: BackendKind) -> Result<Device> {
    match kind {
        BackendKind::Cpu => Ok(Device::flex()),
        BackendKind::Wgpu => wgpu_device().await,
    }
}

#[cfg(not(target_arch = "wasm32"))]
async fn wgpu_device() -> Result<Device> {
    use std::sync::OnceLock;
    static WGPU: OnceLock<std::result::Result<Device, String>> = OnceLock::new();
    WGPU.get_or_init(|| Device::wgpu_options().init().map_err(|e| format!("could not start the wgpu backend: {e}")))
        .clone()
        .map_err(Error::device)
}

#[cfg(target_arch = "wasm32")]
async fn wgpu_device() -> Result<Device> {
    use std::cell::RefCell;
    thread_local! {
        static WGPU: RefCell<Option<std::result::Result<Device, String>>> = const { RefCell::new(None) };
    }
    if let Some(done) = WGPU.with(|c| c.borrow().clone()) {
        return done.map_err(Error::device);
    }
    let result = Device::wgpu_options()
        .init_async()
        .await
        .map_err(|e| format!("could not start WebGPU: {e}"));
    WGPU.with(|c| *c.borrow_mut() = Some(result.clone()));
    result.map_err(Error::device)
}

/// The most bytes one buffer binding may span on `device`: the device's `maxStorageBufferBindingSize`,
/// capped by its `maxBufferSize` (what cubecl's memory pool takes as its largest page), and by
/// [`cap_bindings`] when that was called. `None` on the CPU backend, which binds nothing. The models
/// split what would exceed it (attention scores, the feed-forward's hidden rows, the token embedding,
/// the tiny decoder's rows) and the memory plan (the `plan` module) refuses what cannot be split.
pub fn binding_limit(device: &Device) -> Option<u64> {
    use burn::backend::DispatchDevice;
    let device_limit = match device.as_dispatch() {
        DispatchDevice::Cube(cube) if cube.runtime() == cubecl::RuntimeId::Wgpu => cube.client().properties().memory.max_page_size,
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    Some(match BINDING_CAP.load(std::sync::atomic::Ordering::Relaxed) {
        0 => device_limit,
        cap => device_limit.min(cap),
    })
}

/// Caps [`binding_limit`] on every wgpu device of the process at `bytes` (0: no cap): the page's
/// `?maxBinding=` and the CLI's `--max-binding`, to see what a device with a smaller
/// `maxStorageBufferBindingSize` would get (WebGPU raises a requested limit below its 128 MiB default back
/// to the default, so a page cannot ask its device for less).
pub fn cap_bindings(bytes: u64) {
    BINDING_CAP.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

static BINDING_CAP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The float type the models hold their weights and activations in on the device. f32 is the
/// reference and the fallback; f16 halves weight memory and bandwidth where the device has `shader-f16`
/// (WebGPU) / SHADER_F16 (natively), keeping f32 where precision needs it: softmax and normalisation
/// statistics, the scheduler's arithmetic, guidance (docs/decisions.md, "f16 compute").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    pub fn dtype(self) -> burn::tensor::FloatDType {
        match self {
            Precision::F32 => burn::tensor::FloatDType::F32,
            Precision::F16 => burn::tensor::FloatDType::F16,
        }
    }

    /// Bytes of one value.
    pub fn size(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// What `request` gives on `device`: `auto` is f16 where the device computes in f16 on a real GPU,
    /// f32 elsewhere — a software adapter (lavapipe, SwiftShader: no card behind it) keeps "GPU" memory
    /// in host memory and emulates f16 more slowly than f32 (docs/benchmarks.md), so f16 gains nothing
    /// there; f16 asked of a device without it is refused, saying why.
    pub fn resolve(request: PrecisionRequest, device: &Device) -> Result<Precision> {
        match request {
            PrecisionRequest::Auto => Ok(if f16_available(device) && !software_adapter(device) { Precision::F16 } else { Precision::F32 }),
            PrecisionRequest::Exactly(p) => p.check(device).map(|()| p),
        }
    }

    /// Refuses f16 on a device without it, saying why.
    pub fn check(self, device: &Device) -> Result<()> {
        match self {
            Precision::F16 if !f16_available(device) => Err(f16_refused(device)),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `--precision` / `?precision=`: a precision, or `auto` (the default: f16 where the device has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PrecisionRequest {
    #[default]
    Auto,
    Exactly(Precision),
}

impl FromStr for PrecisionRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" | "" => PrecisionRequest::Auto,
            "f32" | "fp32" | "float32" => PrecisionRequest::Exactly(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => PrecisionRequest::Exactly(Precision::F16),
            other => return Err(Error::invalid("precision", format!("unknown precision `{other}` (expected auto, f32 or f16)"))),
        })
    }
}

/// Whether `device` is a wgpu device on a software adapter (no card behind it: cubecl reports no
/// physical device for a CPU-type adapter such as lavapipe).
pub fn software_adapter(device: &Device) -> bool {
    binding_limit(device).is_some() && device.identity().is_some_and(|id| id.physical.is_none())
}

/// Why `device` cannot compute in f16, for people.
pub fn f16_refused(device: &Device) -> Error {
    let why = if binding_limit(device).is_none() {
        "the CPU backend computes in f32 only"
    } else {
        "this GPU adapter does not have it"
    };
    Error::device(format!("f16 compute needs a GPU device with shader-f16 (SHADER_F16), and {why}; use precision f32 or auto"))
}

/// Whether `device` computes in f16: a wgpu device whose adapter has `shader-f16` (burn enables it when
/// the adapter has it). The CPU backend stays f32: our CPU kernels are f32 kernels.
pub fn f16_available(device: &Device) -> bool {
    use burn::backend::DispatchDevice;
    let wgpu = match device.as_dispatch() {
        DispatchDevice::Cube(cube) => cube.runtime() == cubecl::RuntimeId::Wgpu,
        #[allow(unreachable_patterns)]
        _ => false,
    };
    wgpu && !device.is_autodiff() && device.supports_dtype(burn::tensor::DType::F16)
}

/// `x` as float type `dtype` (unchanged if it already is): the models' and kernels' one cast between
/// the compute precision and its f32 islands.
pub fn cast_to<const D: usize>(x: burn::tensor::Tensor<D>, dtype: burn::tensor::DType) -> burn::tensor::Tensor<D> {
    use burn::tensor::{DType, FloatDType};
    match dtype {
        _ if x.dtype() == dtype => x,
        DType::F16 => x.cast(FloatDType::F16),
        DType::BF16 => x.cast(FloatDType::BF16),
        DType::F64 => x.cast(FloatDType::F64),
        _ => x.cast(FloatDType::F32),
    }
}

/// Reads a float tensor back to the host; asynchronous because WebGPU read-backs are.
pub async fn read_f32<const D: usize>(tensor: burn::tensor::Tensor<D>) -> Result<(Vec<usize>, Vec<f32>)> {
    let shape = tensor.dims().to_vec();
    let data = tensor.into_data_async().await.map_err(|e| Error::device(format!("reading a result back failed: {e}")))?;
    let values = data.try_into_vec_as::<f32>().map_err(|e| Error::device(format!("unexpected result data: {e:?}")))?;
    Ok((shape, values))
}

/// Lets the browser's event loop run (a `setTimeout(0)` turn), so that messages such as a cancel request
/// reach a worker between generation steps even when the CPU backend never awaits anything real.
#[cfg(target_arch = "wasm32")]
pub async fn yield_to_event_loop() {
    use wasm_bindgen::{JsCast, JsValue};
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        let timer = js_sys::Reflect::get(&global, &JsValue::from_str("setTimeout")).ok().and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match timer {
            Some(set_timeout) => {
                let _ = set_timeout.call2(&global, &resolve, &JsValue::from(0));
            }
            None => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
