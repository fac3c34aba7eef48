//! What fine-tuning trains, held on the host in PyTorch's layouts and names: the LoRA factors of f_c and f_s
//! over E (PEFT's keys, `base_model.model.text_model.encoder.layers.<i>.self_attn.q_proj.lora_A.weight`
//! [r, in], `….lora_B.weight` [out, r]) or, in full mode, every weight of f_c and f_s (a `CLIPTextModel`'s
//! state-dict keys, `text_model.embeddings.token_embedding.weight`, …), and the adapter's weights
//! (`norm.weight`, `fc1.weight`, …). Each step they become autodiff leaves ([`Trainables::leaves`]);
//! gradients come back in the same layouts.

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};

use crate::control::{Adapter, AdapterConfig};
use crate::device::read_f32;
use crate::error::{Error, Result};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
pub use crate::models::nn::Leaf;
use crate::models::nn::{Activation, LoraTensors};
use crate::rng::NoiseRng;
use crate::train::losses::Encoder;
use crate::train::{EncoderMode, TrainConfig};
use crate::weights::{RawTensor, SafeTensors, serialize_with_metadata, transpose};

/// Which trained model a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Category,
    Style,
    Adapter,
}

impl Part {
    /// The prefix of its tensors in `finetune-step` io files and checkpoints.
    pub fn prefix(self) -> &'static str {
        match self {
            Part::Category => "category_encoder",
            Part::Style => "style_encoder",
            Part::Adapter => "adapter",
        }
    }
}

/// One trained tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Trainable {
    pub part: Part,
    /// PEFT key (encoders) or the adapter's own key.
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl Trainable {
    /// `<part prefix>.<name>`, as io files and checkpoints name it.
    pub fn io_name(&self) -> String {
        format!("{}.{}", self.part.prefix(), self.name)
    }

    /// For LoRA factors: the module path inside the text model (`encoder.layers.0.self_attn.q_proj`) and
    /// whether this is factor A.
    fn lora_target(&self) -> Option<(&str, bool)> {
        let rest = self.name.strip_prefix("base_model.model.text_model.")?;
        rest.strip_suffix(".lora_A.weight").map(|p| (p, true)).or_else(|| rest.strip_suffix(".lora_B.weight").map(|p| (p, false)))
    }
}

/// The PEFT key of a LoRA factor of layer `layer`'s `kind` (q_proj, k_proj, v_proj, out_proj, fc1, fc2).
pub fn lora_key(layer: usize, kind: &str, factor: char) -> String {
    let block = if kind.starts_with("fc") { "mlp" } else { "self_attn" };
    format!("base_model.model.text_model.encoder.layers.{layer}.{block}.{kind}.lora_{factor}.weight")
}

/// Everything trained, in a fixed order (f_c's tensors, f_s's, the adapter's).
#[derive(Debug, Clone, PartialEq)]
pub struct Trainables {
    pub mode: EncoderMode,
    pub lora_scale: f32,
    /// E's shape, which full-mode encoders are built with.
    pub text: ClipTextConfig,
    pub adapter: AdapterConfig,
    pub tensors: Vec<Trainable>,
}

/// Every parameter of a text model on the host, in PyTorch layout: (name, shape, values).
pub async fn host_parameters(model: &ClipTextModel) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
    let mut out = Vec::new();
    for (name, leaf) in model.leaves() {
        out.push(match leaf {
            Leaf::Transposed(m) => {
                let (shape, v) = read_f32(m).await?;
                (name, vec![shape[1], shape[0]], transpose(&v, shape[0], shape[1]))
            }
            Leaf::Matrix(m) => {
                let (shape, v) = read_f32(m).await?;
                (name, shape, v)
            }
            Leaf::Vector(v) => {
                let (shape, v) = read_f32(v).await?;
                (name, shape, v)
            }
        });
    }
    Ok(out)
}

/// The (in, out) widths of a target kind in a CLIP text layer.
fn target_shape(text: &ClipTextConfig, kind: &str) -> (usize, usize) {
    let (d, m) = (text.hidden_size, text.intermediate_size);
    match kind {
        "fc1" => (d, m),
        "fc2" => (m, d),
        _ => (d, d),
    }
}

impl Trainables {
    /// The starting point, drawn from `seed` in this order. LoRA mode: PEFT's initialisation (A ~ U(±1/√in),
    /// its Kaiming-uniform with a = √5; B = 0) for every target of every layer of f_c and then f_s. Full
    /// mode: f_c and f_s are copies of E's weights (`base`). Then the adapter with LN = (1, 0), fc1 as
    /// `nn.Linear` initialises (weight and bias ~ U(±1/√d)), fc2 = 0 (so A starts as the identity).
    pub async fn init(base: &ClipTextModel, cfg: &TrainConfig, seed: u64) -> Result<Self> {
        let base_parameters = match cfg.encoders {
            EncoderMode::Full => host_parameters(base).await?,
            EncoderMode::Lora => Vec::new(),
        };
        Ok(Self::init_with(&base.config, cfg, seed, &base_parameters))
    }

    /// [`Self::init`] with E's parameters already on the host (full mode only reads them).
    pub fn init_with(text: &ClipTextConfig, cfg: &TrainConfig, seed: u64, base_parameters: &[(String, Vec<usize>, Vec<f32>)]) -> Self {
        let mut rng = NoiseRng::new(seed);
        let mut uniform = |n: usize, bound: f64| -> Vec<f32> { (0..n).map(|_| ((rng.next_uniform() * 2.0 - 1.0) * bound) as f32).collect() };
        let r = cfg.lora.r;
        let mut tensors = Vec::new();
        for part in [Part::Category, Part::Style] {
            match cfg.encoders {
                EncoderMode::Full => {
                    for (name, shape, values) in base_parameters {
                        tensors.push(Trainable { part, name: name.clone(), shape: shape.clone(), values: values.clone() });
                    }
                }
                EncoderMode::Lora => {
                    for layer in 0..text.num_hidden_layers {
                        for kind in &cfg.lora.target_modules {
                            let (d_in, d_out) = target_shape(text, kind);
                            let a = uniform(r * d_in, 1.0 / (d_in as f64).sqrt());
                            tensors.push(Trainable { part, name: lora_key(layer, kind, 'A'), shape: vec![r, d_in], values: a });
                            tensors.push(Trainable { part, name: lora_key(layer, kind, 'B'), shape: vec![d_out, r], values: vec![0.0; d_out * r] });
                        }
                    }
                }
            }
        }
        let (d, h) = (text.hidden_size, cfg.adapter_dim);
        let bound = 1.0 / (d as f64).sqrt();
        let adapter = |name: &str, shape: Vec<usize>, values: Vec<f32>| Trainable { part: Part::Adapter, name: name.into(), shape, values };
        tensors.push(adapter("norm.weight", vec![d], vec![1.0; d]));
        tensors.push(adapter("norm.bias", vec![d], vec![0.0; d]));
        tensors.push(adapter("fc1.weight", vec![h, d], uniform(h * d, bound)));
        tensors.push(adapter("fc1.bias", vec![h], uniform(h, bound)));
        tensors.push(adapter("fc2.weight", vec![d, h], vec![0.0; d * h]));
        tensors.push(adapter("fc2.bias", vec![d], vec![0.0; d]));
        Self { mode: cfg.encoders, lora_scale: cfg.lora.scale(), text: text.clone(), adapter: Self::adapter_config(text, cfg), tensors }
    }

    /// The adapter's shape for E of shape `text`.
    pub fn adapter_config(text: &ClipTextConfig, cfg: &TrainConfig) -> AdapterConfig {
        AdapterConfig { hidden_size: text.hidden_size, adapter_dim: cfg.adapter_dim, layer_norm_eps: 1e-5, hidden_act: Activation::Gelu }
    }

    pub fn sizes(&self) -> Vec<usize> {
        self.tensors.iter().map(|t| t.values.len()).collect()
    }

    pub fn find(&self, io_name: &str) -> Option<&Trainable> {
        self.tensors.iter().find(|t| t.io_name() == io_name)
    }

    /// The trainables as tensors on `device`: on an autodiff device, leaves that require gradients (for a
    /// training step); on a plain device, constants (for evaluation). Returns f_c and f_s (LoRA sets, or
    /// whole text models in full mode) and the adapter, plus the leaves themselves for reading gradients
    /// back.
    pub fn leaves(&self, device: &Device) -> Result<Leaves> {
        let train = device.is_autodiff();
        let mut handles: Vec<Option<Leaf>> = vec![None; self.tensors.len()];
        let mut adapter: HashMap<&str, Leaf> = HashMap::new();
        let mut factors: [HashMap<String, (Option<Tensor<2>>, Option<Tensor<2>>)>; 2] = Default::default();
        for (i, t) in self.tensors.iter().enumerate() {
            if t.part != Part::Adapter && self.mode == EncoderMode::Full {
                continue; // built below, as whole models
            }
            let leaf = match t.shape.len() {
                // PyTorch keeps weights [out, in]; the forward code wants their transposes.
                2 => {
                    let m = Tensor::<2>::from_data(TensorData::new(transpose(&t.values, t.shape[0], t.shape[1]), [t.shape[1], t.shape[0]]), device);
                    Leaf::Transposed(if train { m.require_grad() } else { m })
                }
                _ => {
                    let v = Tensor::<1>::from_data(TensorData::new(t.values.clone(), [t.values.len()]), device);
                    Leaf::Vector(if train { v.require_grad() } else { v })
                }
            };
            match (t.part, t.lora_target(), &leaf) {
                (Part::Category | Part::Style, Some((path, is_a)), Leaf::Transposed(m)) => {
                    let entry = factors[(t.part == Part::Style) as usize].entry(path.to_string()).or_default();
                    if is_a { entry.0 = Some(m.clone()) } else { entry.1 = Some(m.clone()) }
                }
                (Part::Adapter, _, _) => {
                    adapter.insert(t.name.as_str(), leaf.clone());
                }
                _ => return Err(Error::tensor("trainables", t.io_name(), "is not a PEFT LoRA factor of a text-model layer")),
            }
            handles[i] = Some(leaf);
        }
        let mut encoders = Vec::with_capacity(2);
        for (which, part) in [Part::Category, Part::Style].into_iter().enumerate() {
            encoders.push(match self.mode {
                EncoderMode::Lora => {
                    let layers = std::mem::take(&mut factors[which]).into_iter().filter_map(|(path, pair)| Some((path, (pair.0?, pair.1?)))).collect();
                    TunedText::Lora(LoraTensors { scale: self.lora_scale, layers })
                }
                EncoderMode::Full => {
                    let model = self.full_model(part, device)?;
                    let mut by_name: HashMap<String, Leaf> = model.leaves().into_iter().collect();
                    for (i, t) in self.tensors.iter().enumerate().filter(|(_, t)| t.part == part) {
                        let leaf = by_name.remove(&t.name).ok_or_else(|| Error::tensor("trainables", t.io_name(), "is not a parameter of a CLIP text model"))?;
                        handles[i] = Some(leaf);
                    }
                    TunedText::Full(model)
                }
            });
        }
        let take_m = |k: &str| match adapter.get(k) {
            Some(Leaf::Transposed(m)) => m.clone(),
            _ => unreachable!("the adapter's {k} is a matrix"),
        };
        let take_v = |k: &str| match adapter.get(k) {
            Some(Leaf::Vector(v)) => v.clone(),
            _ => unreachable!("the adapter's {k} is a vector"),
        };
        let adapter = Adapter {
            config: self.adapter.clone(),
            norm_weight: take_v("norm.weight"),
            norm_bias: take_v("norm.bias"),
            fc1_t: take_m("fc1.weight"),
            fc1_bias: take_v("fc1.bias"),
            fc2_t: take_m("fc2.weight"),
            fc2_bias: take_v("fc2.bias"),
        };
        let style = encoders.pop().expect("two encoders");
        let category = encoders.pop().expect("two encoders");
        let handles = handles.into_iter().collect::<Option<Vec<_>>>().expect("every trainable has a leaf");
        Ok(Leaves { category, style, adapter, handles })
    }

    /// The tensors of `part` as one safetensors file (its keys are the trainables' names).
    pub fn part_file(&self, part: Part) -> Vec<u8> {
        let tensors: Vec<RawTensor> = self.tensors.iter().filter(|t| t.part == part).map(|t| RawTensor::f32(t.name.clone(), t.shape.clone(), &t.values)).collect();
        serialize_with_metadata(&tensors, &[("format", "pt".into())])
    }

    /// A full-mode encoder as a text model on `device` (on an autodiff device its parameters are leaves).
    fn full_model(&self, part: Part, device: &Device) -> Result<ClipTextModel> {
        let weights = SafeTensors::from_bytes(format!("trainables `{}`", part.prefix()), self.part_file(part))?;
        ClipTextModel::from_weights(self.text.clone(), &weights, None, device)
    }

    /// Checks that the set holds every tensor [`Self::leaves`] needs, with consistent shapes.
    pub fn validate(&self, what: &str) -> Result<()> {
        for k in ["norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] {
            if !self.tensors.iter().any(|t| t.part == Part::Adapter && t.name == k) {
                return Err(Error::tensor(what, format!("adapter.{k}"), "is missing"));
            }
        }
        for t in &self.tensors {
            if t.shape.iter().product::<usize>() != t.values.len() || !(1..=2).contains(&t.shape.len()) {
                return Err(Error::tensor(what, t.io_name(), format!("unexpected shape {:?}", t.shape)));
            }
            if t.part != Part::Adapter && self.mode == EncoderMode::Full {
                if !t.name.starts_with("text_model.") {
                    return Err(Error::tensor(what, t.io_name(), "is not a CLIP text model parameter (`text_model.…`), as full mode trains"));
                }
            } else if t.part != Part::Adapter {
                let Some((path, is_a)) = t.lora_target() else {
                    return Err(Error::tensor(what, t.io_name(), "is not a PEFT LoRA factor of a text-model layer"));
                };
                let other = if is_a { "lora_B" } else { "lora_A" };
                let partner = t.name.replace(if is_a { "lora_A" } else { "lora_B" }, other);
                if !self.tensors.iter().any(|u| u.part == t.part && u.name == partner) {
                    return Err(Error::tensor(what, t.io_name(), format!("has no matching {other} for `{path}`")));
                }
            }
        }
        Ok(())
    }
}

/// f_c or f_s while training: LoRA factors over E, or a whole text model (full mode).
#[derive(Debug)]
pub enum TunedText {
    Lora(LoraTensors),
    Full(ClipTextModel),
}

impl TunedText {
    pub fn encoder(&self) -> Encoder<'_> {
        match self {
            TunedText::Lora(l) => Encoder::Lora(l),
            TunedText::Full(m) => Encoder::Full(m),
        }
    }
}

/// One step's leaves: f_c and f_s, the adapter built from leaves, and every leaf in the trainables' order.
pub struct Leaves {
    pub category: TunedText,
    pub style: TunedText,
    pub adapter: Adapter,
    pub handles: Vec<Leaf>,
}

impl Leaves {
    /// The gradient of every trainable after `loss.backward()`, in PyTorch layout (zero for a tensor the
    /// loss does not reach).
    pub async fn gradients(&self, grads: &burn::tensor::Gradients, trainables: &Trainables) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(self.handles.len());
        for (leaf, t) in self.handles.iter().zip(&trainables.tensors) {
            let g = match leaf {
                Leaf::Transposed(m) => match m.grad(grads) {
                    Some(g) => {
                        let (_, v) = read_f32(g).await?;
                        transpose(&v, t.shape[1], t.shape[0])
                    }
                    None => vec![0.0; t.values.len()],
                },
                Leaf::Matrix(m) => match m.grad(grads) {
                    Some(g) => read_f32(g).await?.1,
                    None => vec![0.0; t.values.len()],
                },
                Leaf::Vector(v) => match v.grad(grads) {
                    Some(g) => read_f32(g).await?.1,
                    None => vec![0.0; t.values.len()],
                },
            };
            out.push(g);
        }
        Ok(out)
    }
}
