//! Text-to-image generation: the only place that knows every component.
//!
//! prompt + negative prompt → tokenizer → text encoders → (classifier-free guidance) scheduler loop with
//! the UNet → decoder → RGBA pixels. The order of operations follows diffusers' StableDiffusionPipeline,
//! so that from the same initial latents the images agree (tests/suite/parity_pipeline.rs).
//!
//! Control-CLIP (docs/control.md): the prompt goes through f_c and A∘f_s, every cross-attention layer
//! mixes the two contexts with the request's weights, and the unconditional row of the guidance batch
//! attends to E(negative prompt) with weights (1, 0), i.e. ordinary attention. A pipeline without
//! Control-CLIP encoders at weights (1, 0) is the plain generator and skips the decoupled attention.

use burn::tensor::{Device, Tensor, TensorData};

use crate::bundle::{BundleFile, EncoderForm, Manifest, component};
use crate::control::{Adapter, ControlEncoders, ControlWeights, EncoderSource};
use crate::device::{Precision, read_f32};
use crate::error::{Error, Result};
use crate::models::attention::ControlContext;
use crate::models::clip::ClipTextModel;
use crate::models::decoder::Decoder;
use crate::models::unet::{Conditioning, UNet2DConditionModel};
use crate::rng::NoiseRng;
use crate::schedulers::{self, SchedulerConfig, SchedulerKind};
use crate::tokenizer::{ClipTokenizer, MAX_POSITIONS};
use crate::weights::LowRankDeltas;

/// The largest width or height a generation may ask for: 4× the area of SDXL's 1024², so no real use is
/// refused, while a mistyped 100000 is refused by name instead of exhausting memory (the page's fields
/// stop at 1024).
pub const MAX_IMAGE_SIDE: usize = 2048;

/// Everything one generation needs, loaded once.
pub struct Pipeline {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// f_c, f_s and the adapter (each absent one is E / the identity).
    pub control: ControlEncoders,
    pub unet: UNet2DConditionModel,
    pub decoder: Decoder,
    pub scheduler_config: SchedulerConfig,
    pub device: Device,
    /// What the text encoders, the UNet and the decoder compute in (the scheduler's arithmetic, guidance
    /// and the latents between steps are f32 either way).
    pub precision: Precision,
}

/// One generation's settings. `init_latents` replaces the seeded noise (parity tests use it).
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f32,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    /// None: the bundle's own scheduler class.
    pub scheduler: Option<SchedulerKind>,
    pub clip_skip: usize,
    /// λ_c and λ_s; the default (1, 0) with no Control-CLIP encoders is plain generation.
    pub control: ControlWeights,
    pub init_latents: Option<Tensor<4>>,
    /// Decode each step's estimate of the clean latents with the tiny decoder, at low resolution, into
    /// `StepProgress::preview` (bundles with a full AutoencoderKL decoder get a notice instead).
    pub preview: bool,
}

impl GenerateRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            steps: 20,
            guidance: 7.5,
            seed: 0,
            width: 512,
            height: 512,
            scheduler: None,
            clip_skip: 0,
            control: ControlWeights::default(),
            init_latents: None,
            preview: false,
        }
    }
}

/// The UNet's conditioning for a whole generation, owned.
enum UNetConditioning {
    Text(Tensor<3>),
    Control(ControlContext),
}

impl UNetConditioning {
    fn as_conditioning(&self) -> Conditioning<'_> {
        match self {
            UNetConditioning::Text(t) => Conditioning::Text(t),
            UNetConditioning::Control(c) => Conditioning::Control(c),
        }
    }
}

/// Reported after every step; return `false` from the callback to cancel.
#[derive(Debug, Clone)]
pub struct StepProgress {
    pub step: usize,
    pub total: usize,
    pub step_ms: f64,
    pub elapsed_ms: f64,
    /// With `GenerateRequest::preview`: the step's estimate of the final image, low resolution.
    pub preview: Option<Preview>,
}

/// A low-resolution picture of where a generation is heading: the tiny decoder applied to the step's
/// estimate of the clean latents, average-pooled first so that the preview is at most
/// `PREVIEW_MAX_LATENT` latents (×8 pixels) on its long side.
#[derive(Debug, Clone)]
pub struct Preview {
    pub width: usize,
    pub height: usize,
    /// Row-major RGBA8.
    pub rgba: Vec<u8>,
}

/// Previews decode at most 32 latents per side (256 px with an 8× decoder): a 512² generation's preview
/// costs a quarter of a full tiny-decoder pass.
pub const PREVIEW_MAX_LATENT: usize = 32;

#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub width: usize,
    pub height: usize,
    /// Row-major RGBA8.
    pub rgba: Vec<u8>,
    /// The decoded image in [0, 1], [3, H, W] (before rounding to 8 bits), for comparisons.
    pub image: Vec<f32>,
    /// Things the user should know (a truncated prompt, …).
    pub notices: Vec<String>,
}

/// Milliseconds from a monotonic clock on both targets.
fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1000.0
    }
}

impl Pipeline {
    /// Token ids of a prompt; a notice when it was truncated to the encoder's 77 positions.
    fn tokenize(&self, prompt: &str, what: &str, notices: &mut Vec<String>) -> Result<Vec<u32>> {
        let t = self.tokenizer.encode(prompt, MAX_POSITIONS)?;
        if let Some(n) = t.truncation_notice() {
            notices.push(if what.is_empty() { n } else { format!("{what} {n}") });
        }
        Ok(t.ids)
    }

    /// What the UNet attends to, for the whole guidance batch ([negative, positive] like diffusers, or
    /// [positive] without guidance).
    fn conditioning(&self, req: &GenerateRequest, guided: bool, notices: &mut Vec<String>) -> Result<UNetConditioning> {
        let negative = if guided { Some(self.tokenize(&req.negative_prompt, "negative", notices)?) } else { None };
        let positive = self.tokenize(&req.prompt, "", notices)?;
        let encode = |rows: &[Vec<u32>]| Ok::<_, Error>(self.text_encoder.forward(rows, req.clip_skip)?.last_hidden_state);
        if self.control.is_identity() && req.control == ControlWeights::default() {
            let rows: Vec<Vec<u32>> = negative.into_iter().chain([positive]).collect();
            return Ok(UNetConditioning::Text(encode(&rows)?));
        }
        let (category, style) = self.control.encode(&self.text_encoder, &[positive], req.clip_skip)?;
        let weights = (req.control.category, req.control.style);
        let context = match negative {
            Some(negative) => {
                let negative = encode(&[negative])?;
                ControlContext::new(
                    Tensor::cat(vec![negative.clone(), category], 0),
                    Tensor::cat(vec![negative, style], 0),
                    &[(1.0, 0.0), weights],
                )?
            }
            None => ControlContext::new(category, style, &[weights])?,
        };
        Ok(UNetConditioning::Control(context))
    }

    /// Checks a request against this pipeline (size a multiple of its factor and within bounds, steps,
    /// guidance, weights) and returns the latents' (height, width); every generation starts here, and
    /// `bundle` checks its recommended settings with it.
    pub fn validate(&self, req: &GenerateRequest) -> Result<(usize, usize)> {
        let f = self.decoder.scale_factor() * self.unet.config.downscale_factor();
        for (what, v) in [("width", req.width), ("height", req.height)] {
            if v == 0 || v % f != 0 {
                return Err(Error::invalid(what, format!("{v} is not a positive multiple of {f} (decoder factor × UNet factor)")));
            }
            if v > MAX_IMAGE_SIDE {
                return Err(Error::invalid(what, format!("{v} is over the largest side control-clip generates, {MAX_IMAGE_SIDE} pixels")));
            }
        }
        if req.steps == 0 {
            return Err(Error::invalid("steps", "must be at least 1"));
        }
        if !req.guidance.is_finite() || req.guidance < 0.0 {
            return Err(Error::invalid("guidance", format!("{} is not a finite, non-negative number", req.guidance)));
        }
        req.control.validate()?;
        let s = self.decoder.scale_factor();
        Ok((req.height / s, req.width / s))
    }

    /// Runs one generation. `progress` is called after every step; returning false cancels (the
    /// tensors of the run are dropped, which frees their GPU memory).
    pub async fn generate(&self, req: &GenerateRequest, progress: &mut dyn FnMut(StepProgress) -> bool) -> Result<GeneratedImage> {
        let (lh, lw) = self.validate(req)?;
        let start = now_ms();
        let mut notices = Vec::new();
        let guided = req.guidance > 1.0;
        // diffusers batches [negative, positive] and splits the UNet's output the same way.
        let context = self.conditioning(req, guided, &mut notices)?;

        let kind = match req.scheduler {
            Some(k) => k,
            None => self.scheduler_config.kind().ok_or_else(|| {
                Error::config(&self.scheduler_config.file, "_class_name", "is not a scheduler we implement; choose one explicitly")
            })?,
        };
        let mut scheduler = schedulers::build(kind, &self.scheduler_config)?;
        scheduler.set_timesteps(req.steps)?;
        let timesteps = scheduler.timesteps().to_vec();

        let channels = self.unet.config.in_channels;
        let shape = [1, channels, lh, lw];
        let mut rng = NoiseRng::new(req.seed);
        let latents = match &req.init_latents {
            Some(l) if l.dims() == shape => l.clone(),
            Some(l) => return Err(Error::invalid("init_latents", format!("shape {:?}, expected {shape:?}", l.dims()))),
            None => self.noise(&mut rng, shape),
        };
        let mut latents = latents * scheduler.init_noise_sigma();

        let preview = req.preview && matches!(self.decoder, Decoder::Tiny(_));
        if req.preview && !preview {
            notices.push("no preview: it needs a tiny (TAESD) decoder and this bundle has the full AutoencoderKL".to_string());
        }
        let total = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            let step_start = now_ms();
            let input = scheduler.scale_model_input(latents.clone(), i);
            let (input, batch) = if guided { (Tensor::cat(vec![input.clone(), input], 0), 2) } else { (input, 1) };
            let out = self.unet.forward_conditioned(input, &vec![t as f32; batch], context.as_conditioning())?;
            let noise_pred = if guided {
                let uncond = out.clone().slice([0..1]);
                let text = out.slice([1..2]);
                uncond.clone() + (text - uncond) * req.guidance as f64
            } else {
                out
            };
            let noise = if scheduler.needs_noise() { Some(self.noise(&mut rng, shape)) } else { None };
            let out = scheduler.step(noise_pred, i, latents, noise)?;
            latents = out.prev_sample;
            // Waiting for the step keeps progress honest and lets a cancel land between steps.
            let (_, probe) = read_f32(latents.clone().slice([0..1, 0..1, 0..1, 0..1])).await?;
            if !probe[0].is_finite() {
                return Err(Error::device(format!("the latents became non-finite at step {}", i + 1)));
            }
            #[cfg(target_arch = "wasm32")]
            crate::device::yield_to_event_loop().await;
            let preview = match preview {
                true => Some(self.preview(out.denoised).await?),
                false => None,
            };
            let now = now_ms();
            if !progress(StepProgress { step: i + 1, total, step_ms: now - step_start, elapsed_ms: now - start, preview }) {
                return Err(Error::Cancelled);
            }
        }

        let (w, h, rgba, values) = self.decode_pixels(latents).await?;
        Ok(GeneratedImage { width: w, height: h, rgba, image: values[..3 * h * w].to_vec(), notices })
    }

    /// Decodes latents and reads the image back: (width, height, RGBA8, [0, 1] values in CHW order).
    async fn decode_pixels(&self, latents: Tensor<4>) -> Result<(usize, usize, Vec<u8>, Vec<f32>)> {
        let image = self.decoder.decode(latents);
        // diffusers' postprocess: [-1, 1] → [0, 1], clamped.
        let image = (image / 2.0 + 0.5).clamp(0.0, 1.0);
        let (dims, values) = read_f32(image).await?;
        let (h, w) = (dims[2], dims[3]);
        let mut rgba = vec![255u8; h * w * 4];
        for c in 0..3.min(dims[1]) {
            for p in 0..h * w {
                rgba[p * 4 + c] = (values[c * h * w + p] * 255.0).round() as u8;
            }
        }
        Ok((w, h, rgba, values))
    }

    /// The preview of a step's clean-latent estimate (see `Preview`).
    async fn preview(&self, denoised: Tensor<4>) -> Result<Preview> {
        let [_, _, lh, lw] = denoised.dims();
        let factor = lh.max(lw).div_ceil(PREVIEW_MAX_LATENT);
        let pooled = match factor {
            1 => denoised,
            f => burn::tensor::module::avg_pool2d(denoised, burn::tensor::ops::AvgPoolOptions::new([f, f])),
        };
        let (width, height, rgba, _) = self.decode_pixels(pooled).await?;
        Ok(Preview { width, height, rgba })
    }

    fn noise(&self, rng: &mut NoiseRng, shape: [usize; 4]) -> Tensor<4> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(rng.normals(n), shape), &self.device)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Pipeline {
    /// Loads the components from diffusers / transformers folders. The decoder folder may hold an
    /// `AutoencoderKL` or an `AutoencoderTiny` (told apart by `_class_name` in its config.json).
    pub fn from_dirs(
        tokenizer: &std::path::Path,
        text_encoder: &std::path::Path,
        unet: &std::path::Path,
        decoder: &std::path::Path,
        scheduler_config: &std::path::Path,
        device: &Device,
    ) -> Result<Self> {
        Self::from_dirs_in([tokenizer, text_encoder, unet, decoder, scheduler_config], device, Precision::F32)
    }

    /// [`Self::from_dirs`] (the same five paths, in that order) computing in `precision`.
    pub fn from_dirs_in(
        [tokenizer, text_encoder, unet, decoder, scheduler_config]: [&std::path::Path; 5],
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        use crate::models::ModelFolder;
        precision.check(device)?;
        let dtype = precision.dtype();
        let (tokenizer_path, tokenizer) = (tokenizer, ClipTokenizer::read(tokenizer)?);
        let text_encoder = ClipTextModel::read_dir_in(text_encoder, device, dtype)?;
        tokenizer.check_fits(&tokenizer_path.display().to_string(), text_encoder.config.vocab_size, "its config.json")?;
        Ok(Self {
            tokenizer,
            text_encoder,
            control: ControlEncoders::default(),
            unet: UNet2DConditionModel::read_dir_in(unet, device, dtype)?,
            decoder: Decoder::read_dir_in(decoder, device, dtype)?,
            scheduler_config: SchedulerConfig::read(scheduler_config)?,
            device: device.clone(),
            precision,
        })
    }
}

impl Pipeline {
    /// Builds the pipeline from a bundle's manifest. `fetch(file)` returns the bytes of one of its files,
    /// already verified against the manifest (natively [`Pipeline::read_bundle`] reads and verifies them;
    /// the page's worker verifies what it downloads or finds in its cache, so that each file is hashed
    /// once). Weights split into shards are read as one set. The models compute in `precision`
    /// ([`Precision::resolve`] says what a device can take).
    pub async fn from_bundle<F, Fut>(manifest: &Manifest, fetch: F, device: &Device, precision: Precision) -> Result<Self>
    where
        F: Fn(BundleFile) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>>>,
    {
        precision.check(device)?;
        let dtype = precision.dtype();
        let weights = |name: &'static str| manifest.read_weights(name, &fetch);
        let tokenizer_file = manifest.components.tokenizer.clone();
        let tokenizer_name = manifest.path(&tokenizer_file.file);
        let tokenizer = ClipTokenizer::from_bytes(&tokenizer_name, &fetch(tokenizer_file).await?)?;
        let base_config = manifest.config(component::TEXT_ENCODER)?;
        let base_weights = weights(component::TEXT_ENCODER).await?;
        let text_encoder = ClipTextModel::load_in(&base_config, &base_weights, None, device, dtype)?;
        tokenizer.check_fits(&tokenizer_name, text_encoder.config.vocab_size, &base_config.file)?;
        let mut sources = Vec::new();
        for name in [component::CATEGORY_ENCODER, component::STYLE_ENCODER] {
            sources.push(match manifest.components.weights(name) {
                None => None,
                Some(entry) => {
                    let weights = weights(name).await?;
                    let config = manifest.config(name)?;
                    Some(match entry.form.unwrap_or(EncoderForm::Full) {
                        EncoderForm::Lora => EncoderSource::Deltas(LowRankDeltas::load(&config, &weights)?),
                        EncoderForm::Full => EncoderSource::Full(config, weights),
                    })
                }
            });
        }
        let adapter = match manifest.components.adapter {
            None => None,
            Some(_) => Some(Adapter::load_in(&manifest.config(component::ADAPTER)?, &weights(component::ADAPTER).await?, device, dtype)?),
        };
        let style = sources.pop().flatten();
        let category = sources.pop().flatten();
        let control = ControlEncoders::load_in((&base_config, &base_weights), category, style, adapter, device, dtype)?;
        drop(base_weights);
        let unet = UNet2DConditionModel::load_in(&manifest.config(component::UNET)?, &weights(component::UNET).await?, device, dtype)?;
        let decoder = Decoder::load_in(&manifest.config(component::DECODER)?, &weights(component::DECODER).await?, device, dtype)?;
        let scheduler_config = SchedulerConfig::from_json(&manifest.config(component::SCHEDULER)?)?;
        Ok(Self { tokenizer, text_encoder, control, unet, decoder, scheduler_config, device: device.clone(), precision })
    }

    /// Loads a bundle folder, verifying every file against its manifest; f32 compute.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn read_bundle(dir: &std::path::Path, device: &Device) -> Result<Self> {
        Self::read_bundle_in(dir, device, Precision::F32).await
    }

    /// [`Self::read_bundle`] computing in `precision`.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn read_bundle_in(dir: &std::path::Path, device: &Device, precision: Precision) -> Result<Self> {
        let manifest = Manifest::read_dir(dir)?;
        let fetch = |file: BundleFile| std::future::ready(manifest.read_verified(dir, &file));
        Self::from_bundle(&manifest, fetch, device, precision).await
    }
}
