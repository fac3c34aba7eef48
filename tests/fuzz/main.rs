//! Fuzzing of everything that reads a user's files: a stable-Rust harness (cargo-fuzz needs nightly and a
//! sanitizer build of burn's whole tree, an 18-minute cold build here), with decisions drawn through
//! `arbitrary::Unstructured` from a seeded generator.
//!
//! Each target starts from its committed corpus (tests/fuzz/corpus/TARGET/: real files of each kind) and
//! mutates inputs: byte edits, splices of two inputs, and for JSON, edits of one value (huge, negative,
//! fractional, wrong-typed, deeply nested). Without coverage to steer by, the harness steers by what the
//! code *says*: an input whose result (Ok, or the first words of its error) has not been seen yet joins the
//! working corpus, so inputs that get past one check go on to the next.
//!
//! A finding is a panic (caught), or one call slower than 2 s (a loop a bound should have stopped). Each is
//! written to tests/fuzz/regressions/TARGET/ and fails the run; the committed regressions are replayed
//! first on every run, so a fixed crash stays fixed. An abort (out of memory) ends the process: the input
//! being run is always in $CARGO_TARGET_TMPDIR/fuzz-current-TARGET, for the run script to keep.
//!
//! `cargo test --test fuzz` (CI): the size-scaling checks (each parser at n and 8n), then replays corpus and
//! regressions and fuzzes each target for 1 s. Two targets go past parsing: `bundle_generate` (a manifest
//! over the tiny random bundle's files, through building every model to one generation step) and
//! `finetune_step` (a dataset and training config over labelled pictures, through the trainer's first step).
//! `FUZZ_MEMORY_MB` (default 6144) caps the process's address space, so that an input that would allocate
//! without bound aborts here, its input kept, rather than taking the machine's memory.
//! `FUZZ_SECONDS=900 FUZZ_TARGETS=manifest,safetensors FUZZ_SAVE=1 cargo test --test fuzz` (the long runs
//! of docs/reliability.md): that many seconds per target; with FUZZ_SAVE=1 the smallest new inputs
//! (at most 48 a target) join the committed corpus.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use control_clip::config::ConfigJson;

type Target = fn(&[u8]) -> Option<String>;

/// The error's first words (what distinguishes one check from another), or "ok".
fn outcome<T>(r: control_clip::Result<T>) -> Option<String> {
    Some(match r {
        Ok(_) => "ok".into(),
        Err(e) => {
            // Numbers and quoted names vary with the input, not with the check that failed.
            let text = e.to_string();
            text.split_whitespace().filter(|w| !w.chars().any(|c| c.is_ascii_digit() || matches!(c, '`' | '[' | ']' | '"' | '{' | '}'))).take(8).collect::<Vec<_>>().join(" ")
        }
    })
}

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn config(data: &[u8]) -> control_clip::Result<ConfigJson> {
    ConfigJson::parse("fuzz.json", &text(data))
}

fn manifest(data: &[u8]) -> Option<String> {
    outcome(control_clip::bundle::Manifest::parse("fuzz/manifest.json", &text(data)).and_then(|m| {
        for f in m.components.files() {
            m.path(&f.file);
        }
        for name in control_clip::bundle::component::WEIGHTS {
            if m.components.weights(name).is_some() {
                m.config(name)?;
            }
        }
        Ok(())
    }))
}

fn safetensors(data: &[u8]) -> Option<String> {
    // Also as two shards, split where the first byte says.
    let cut = data.first().map_or(0, |&b| b as usize * data.len() / 256);
    let read_all = |s: &control_clip::SafeTensors| -> control_clip::Result<()> {
        for key in s.keys().map(String::from).collect::<Vec<_>>() {
            if s.is_float(&key)? { s.f32(&key).map(|_| ()) } else { s.i64(&key).map(|_| ()) }?;
        }
        Ok(())
    };
    let whole = control_clip::SafeTensors::from_bytes("fuzz.safetensors", data.to_vec()).and_then(|s| read_all(&s));
    let shards = control_clip::SafeTensors::from_bytes("a", data[..cut].to_vec())
        .and_then(|a| Ok(vec![a, control_clip::SafeTensors::from_bytes("b", data[cut..].to_vec())?]))
        .and_then(|v| control_clip::SafeTensors::from_shards("fuzz", v))
        .and_then(|s| read_all(&s));
    Some(format!("{} / {}", outcome(whole)?, outcome(shards)?))
}

fn clip_config(data: &[u8]) -> Option<String> {
    outcome(config(data).and_then(|c| control_clip::ClipTextConfig::from_json(&c)))
}

fn unet_config(data: &[u8]) -> Option<String> {
    outcome(config(data).and_then(|c| control_clip::models::unet::UNetConfig::from_json(&c)))
}

fn vae_config(data: &[u8]) -> Option<String> {
    outcome(config(data).and_then(|c| control_clip::models::vae::VaeConfig::from_json(&c)))
}

fn tiny_decoder_config(data: &[u8]) -> Option<String> {
    outcome(config(data).and_then(|c| control_clip::models::taesd::TinyDecoderConfig::from_json(&c)))
}

fn adapter_config(data: &[u8]) -> Option<String> {
    outcome(config(data).and_then(|c| control_clip::control::adapter::AdapterConfig::from_json(&c)))
}

fn scheduler(data: &[u8]) -> Option<String> {
    // The last byte picks the number of steps.
    let steps = data.last().map_or(1, |&b| b as usize % 60);
    outcome(config(data).and_then(|c| {
        let cfg = control_clip::schedulers::SchedulerConfig::from_json(&c)?;
        let kind = cfg.kind().unwrap_or(control_clip::schedulers::SchedulerKind::Ddim);
        let mut s = control_clip::schedulers::build(kind, &cfg)?;
        s.set_timesteps(steps)?;
        Ok(s.timesteps().len())
    }))
}

fn tokenizer() -> &'static control_clip::ClipTokenizer {
    static TOKENIZER: std::sync::OnceLock<control_clip::ClipTokenizer> = std::sync::OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer.json");
        control_clip::ClipTokenizer::from_bytes("tokenizer.json", &std::fs::read(path).unwrap()).unwrap()
    })
}

fn tokenizer_prompt(data: &[u8]) -> Option<String> {
    let r = tokenizer().encode(&text(data), control_clip::MAX_POSITIONS);
    if let Ok(t) = &r {
        assert_eq!(t.ids.len(), control_clip::MAX_POSITIONS, "a prompt's ids are always padded or cut to 77");
    }
    outcome(r)
}

fn tokenizer_vocab(data: &[u8]) -> Option<String> {
    // vocab.json and merges.txt from one input: split at the first NUL byte.
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let merges = data.get(cut + 1..).unwrap_or_default();
    let special = control_clip::tokenizer::SpecialTokens::default();
    outcome(control_clip::ClipTokenizer::from_vocab(("vocab.json", &data[..cut]), ("merges.txt", merges), &special).and_then(|t| t.encode("a red star", 77)))
}

fn image(data: &[u8]) -> Option<String> {
    outcome(control_clip::models::image_processor::RgbImage::decode("fuzz.png", data))
}

fn dataset(data: &[u8]) -> Option<String> {
    // domain.json and labels.jsonl from one input: split at the first NUL byte.
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let labels = text(data.get(cut + 1..).unwrap_or_default()).into_owned();
    outcome(
        control_clip::train::dataset::Domain::parse("domain.json", &text(&data[..cut]))
            .and_then(|d| control_clip::train::dataset::parse_labels("labels.jsonl", &labels, &d)),
    )
}

fn train_config(data: &[u8]) -> Option<String> {
    outcome(control_clip::train::TrainConfig::parse("train.json", &text(data)))
}

/// The tiny random bundle's files (tests/fixtures/bundles/tiny-random), by name, read once.
fn bundle_files() -> &'static std::collections::HashMap<String, Vec<u8>> {
    static FILES: std::sync::OnceLock<std::collections::HashMap<String, Vec<u8>>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundles/tiny-random");
        read_dir_files(&dir).into_iter().map(|(p, b)| (p.file_name().unwrap().to_string_lossy().into_owned(), b)).collect()
    })
}

/// Past parsing: a manifest (its configs, defaults and file list: the corpus is the tiny random
/// bundle's) over that bundle's files, verified as the page verifies them, through building every model
/// to one generation step with the manifest's defaults (at most 64², one step, so that a call stays short).
fn bundle_generate(data: &[u8]) -> Option<String> {
    use control_clip::bundle::{BundleFile, Manifest};
    let device = burn::tensor::Device::flex();
    outcome(pollster::block_on(async {
        let manifest = Manifest::parse("fuzz/manifest.json", &text(data))?;
        let fetch = |file: BundleFile| {
            let found = bundle_files().get(&file.file).cloned();
            let manifest = &manifest;
            async move {
                let bytes = found.ok_or_else(|| control_clip::Error::file(manifest.path(&file.file), "is not in the bundle"))?;
                manifest.verify(&file, &bytes)?;
                Ok(bytes)
            }
        };
        let pipeline = control_clip::pipeline::Pipeline::from_bundle(&manifest, fetch, &device, control_clip::device::Precision::F32).await?;
        let d = &manifest.defaults;
        let mut req = control_clip::pipeline::GenerateRequest::new(d.prompt.clone().unwrap_or_else(|| "a red star".into()));
        req.steps = 1;
        req.guidance = d.guidance.unwrap_or(7.5) as f32;
        req.width = d.width.unwrap_or(64).min(64);
        req.height = d.height.unwrap_or(64).min(64);
        req.control = control_clip::control::ControlWeights::new(d.category_weight.unwrap_or(1.0) as f32, d.style_weight.unwrap_or(0.0) as f32)?;
        pipeline.generate(&req, &mut |_| true).await
    }))
}

/// The default model's CLIP (tools/shapes/model/clip) and the labelled shapes pictures
/// (tests/fixtures/finetune/shapes/train) with their image features, made once.
struct TrainingWorld {
    clip: control_clip::models::clip_vision::ClipModel,
    tokenizer: control_clip::ClipTokenizer,
    features: std::collections::HashMap<String, Vec<f32>>,
}

fn training_world() -> &'static TrainingWorld {
    static WORLD: std::sync::OnceLock<TrainingWorld> = std::sync::OnceLock::new();
    WORLD.get_or_init(|| {
        use control_clip::models::ModelFolder;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let device = burn::tensor::Device::flex();
        let clip_dir = root.join("tools/shapes/model/clip");
        let clip = control_clip::models::clip_vision::ClipModel::read_dir(&clip_dir, &device).unwrap();
        let processor = control_clip::models::image_processor::ImageProcessor::from_json(&ConfigJson::read(&clip_dir.join("preprocessor_config.json")).unwrap()).unwrap();
        let tokenizer = control_clip::ClipTokenizer::from_bytes("tokenizer.json", &std::fs::read(clip_dir.join("tokenizer.json")).unwrap()).unwrap();
        let pictures: Vec<(String, Vec<u8>)> = read_dir_files(&root.join("tests/fixtures/finetune/shapes/train"))
            .into_iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "png"))
            .map(|(p, b)| (p.file_name().unwrap().to_string_lossy().into_owned(), b))
            .collect();
        let all = pollster::block_on(control_clip::train::finetune::image_features(&clip.vision, &processor, &pictures)).unwrap();
        let p = clip.vision.config.projection_dim;
        let features = pictures.iter().enumerate().map(|(i, (name, _))| (name.clone(), all[i * p..(i + 1) * p].to_vec())).collect();
        TrainingWorld { clip, tokenizer, features }
    })
}

/// Past parsing: domain.json, labels.jsonl and train.json (split at NUL bytes) over the labelled shapes
/// pictures, through the prepared data and the trainer to its first step (with the default model's CLIP
/// text tower as E). Configs asking for more than a few hundred rows a step are not stepped (a legitimate
/// but slow request, not a finding).
fn finetune_step(data: &[u8]) -> Option<String> {
    use control_clip::train::dataset::{Domain, parse_labels};
    use control_clip::train::finetune::{Prepared, Trainer};
    let mut parts = data.splitn(3, |&b| b == 0);
    let (domain, labels, config) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let world = training_world();
    outcome(pollster::block_on(async {
        let domain = Domain::parse("domain.json", &text(domain))?;
        let labels = parse_labels("labels.jsonl", &text(labels), &domain)?;
        let cfg = control_clip::train::TrainConfig::parse("train.json", &text(config))?;
        if cfg.batch + 3 * cfg.triplets + cfg.keep_prompts + cfg.adapter_dim / 64 + cfg.lora.r / 64 > 400 {
            return Ok(0.0);
        }
        let mut features = Vec::new();
        for l in &labels {
            features.extend(world.features.get(&l.file).ok_or_else(|| control_clip::Error::file(&l.file, "is not in the dataset folder"))?);
        }
        let temperature = cfg.temperature.unwrap_or(world.clip.logit_scale.exp());
        let prepared = Prepared::new(&domain, &labels, features, world.clip.vision.config.projection_dim, &world.tokenizer, "domain.json", temperature)?;
        let text = &world.clip.text;
        let mut trainer = Trainer::new(cfg, text, text, prepared).await?;
        Ok(trainer.train_step().await?.losses[7])
    }))
}

const TARGETS: [(&str, Target); 15] = [
    ("manifest", manifest),
    ("safetensors", safetensors),
    ("clip_config", clip_config),
    ("unet_config", unet_config),
    ("vae_config", vae_config),
    ("tiny_decoder_config", tiny_decoder_config),
    ("adapter_config", adapter_config),
    ("scheduler", scheduler),
    ("tokenizer_prompt", tokenizer_prompt),
    ("tokenizer_vocab", tokenizer_vocab),
    ("image", image),
    ("dataset", dataset),
    ("train_config", train_config),
    ("bundle_generate", bundle_generate),
    ("finetune_step", finetune_step),
];

/// Size scaling: each parser on a generated input of size n and of size 8n (the best of three timings
/// each). Linear work takes about 8× as long, quadratic 64×; more than 24× (plus 5 ms of timer and cache
/// noise) fails, naming the parser. The fuzzing's inputs are too small to show quadratic time.
fn scaling_inputs(n: usize) -> Vec<(&'static str, Target, Vec<u8>)> {
    let quoted = |v: Vec<String>| v.join(", ");
    // labels.jsonl of n lines and a domain of n categories.
    let categories: Vec<String> = (0..n).map(|i| format!("\"c{i}\"")).collect();
    let domain = format!(
        r#"{{"categories": [{}], "styles": ["x", "y"], "category_templates": ["a {{}}"], "style_templates": ["{{}} style"], "caption_templates": ["a {{category}} in {{style}} style"], "general_prompts": ["a c0"]}}"#,
        quoted(categories)
    );
    let labels: Vec<String> = (0..n.max(2)).map(|i| format!(r#"{{"file": "{i:07}.png", "category": "c{}", "style": "{}"}}"#, i % n, ["x", "y"][i % 2])).collect();
    let mut dataset_input = domain.into_bytes();
    dataset_input.push(0);
    dataset_input.extend(labels.join("\n").into_bytes());
    // A manifest whose text encoder comes in n / 2 shards (at 8n still under the 4 MiB manifest bound,
    // which would otherwise refuse it from its size and time nothing).
    let mut manifest_json: serde_json::Value = serde_json::from_slice(&bundle_files()["manifest.json"]).unwrap();
    let shards: Vec<serde_json::Value> = control_clip::bundle::shard_file_names("text_encoder", n / 2)
        .into_iter()
        .map(|f| serde_json::json!({"file": f, "sha256": "0".repeat(64), "bytes": 1}))
        .collect();
    manifest_json["components"]["text_encoder"]["shards"] = serde_json::Value::Array(shards);
    // A safetensors file of n one-element tensors.
    let header: Vec<String> = (0..n).map(|i| format!(r#""t{i}": {{"dtype": "F32", "shape": [1], "data_offsets": [{}, {}]}}"#, 4 * i, 4 * i + 4)).collect();
    let header = format!("{{{}}}", header.join(", "));
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend(header.into_bytes());
    st.extend(vec![0u8; 4 * n]);
    // Configs with n unknown fields; a training config with n LoRA targets.
    let extra: Vec<String> = (0..n).map(|i| format!(r#""extra_{i}": {i}"#)).collect();
    let clip = format!(r#"{{"hidden_size": 32, "num_attention_heads": 2, {}}}"#, extra.join(", "));
    let unet = format!(r#"{{"block_out_channels": [32, 64], {}}}"#, extra.join(", "));
    let targets: Vec<String> = (0..n).map(|i| ["\"q_proj\"", "\"v_proj\""][i % 2].to_string()).collect();
    let train = format!(r#"{{"lora": {{"target_modules": [{}]}}}}"#, targets.join(", "));
    // vocab.json and merges.txt of about n entries.
    let vocab: Vec<String> = (0..n).map(|i| format!("\"t{i}</w>\": {i}")).chain(["\"<|startoftext|>\": 1000000000".into(), "\"<|endoftext|>\": 1000000001".into()]).collect();
    let mut vocab_input = format!("{{{}}}", vocab.join(", ")).into_bytes();
    vocab_input.push(0);
    vocab_input.extend((0..n).map(|i| format!("t {i}</w>\n")).collect::<String>().into_bytes());
    // A prompt of about 10 n characters; a square grey PNG of about 16 n pixels that does not compress.
    let prompt = "a red star ".repeat(n).into_bytes();
    let side = ((16 * n) as f64).sqrt() as usize;
    let mut png = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png, side as u32, side as u32);
        enc.set_color(png::ColorType::Grayscale);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&(0..side * side).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>()).unwrap();
    }
    vec![
        ("dataset", dataset as Target, dataset_input),
        ("manifest", manifest as Target, serde_json::to_vec(&manifest_json).unwrap()),
        ("safetensors", safetensors as Target, st),
        ("clip_config", clip_config as Target, clip.into_bytes()),
        ("unet_config", unet_config as Target, unet.into_bytes()),
        ("train_config", train_config as Target, train.into_bytes()),
        ("tokenizer_vocab", tokenizer_vocab as Target, vocab_input),
        ("tokenizer_prompt", tokenizer_prompt as Target, prompt),
        ("image", image as Target, png),
    ]
}

fn scaling_checks(n: usize) -> Vec<String> {
    let time = |f: Target, input: &[u8]| (0..3).map(|_| {
        let start = Instant::now();
        let _ = catch_unwind(AssertUnwindSafe(|| f(input)));
        start.elapsed()
    }).min().unwrap();
    let mut failures = Vec::new();
    for ((name, f, small), (_, _, large)) in scaling_inputs(n).into_iter().zip(scaling_inputs(8 * n)) {
        let (a, b) = (time(f, &small), time(f, &large));
        let ratio = b.as_secs_f64() / a.as_secs_f64().max(1e-9);
        println!("scaling {name:<18} {:>8} B: {:>9.2?}   {:>9} B: {:>9.2?}   ×{ratio:.1}", small.len(), a, large.len(), b);
        if b > a * 24 + Duration::from_millis(5) {
            failures.push(format!("scaling: {name} took {b:.2?} at 8n against {a:.2?} at n (×{ratio:.0}; linear is ×8)"));
        }
    }
    failures
}

/// xorshift64*: the run's randomness (seeded, so a run can be repeated).
struct Rng(u64);

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }
}

const INTERESTING: [&str; 14] =
    ["0", "-1", "1", "2", "65", "4294967296", "18446744073709551616", "1e309", "-1e309", "0.5", "NaN", "null", "\"\"", "[]"];

/// A JSON value somewhere in `v` replaced by something a parser should refuse or bound.
fn mutate_json(u: &mut Unstructured, v: &mut serde_json::Value) -> arbitrary::Result<()> {
    use serde_json::Value;
    let descend = u.ratio(3u8, 4)?;
    match v {
        Value::Object(map) if descend && !map.is_empty() => {
            let i = u.choose_index(map.len())?;
            let key = map.keys().nth(i).cloned().unwrap();
            if u.ratio(1u8, 8)? {
                map.remove(&key);
                return Ok(());
            }
            mutate_json(u, map.get_mut(&key).unwrap())
        }
        Value::Array(list) if descend && !list.is_empty() => {
            let i = u.choose_index(list.len())?;
            match u.int_in_range(0..=7u8)? {
                0 => {
                    list.remove(i);
                    Ok(())
                }
                1 => {
                    let copy = list[i].clone();
                    let times = u.int_in_range(1..=64usize)?;
                    list.extend(std::iter::repeat_n(copy, times));
                    Ok(())
                }
                _ => mutate_json(u, &mut list[i]),
            }
        }
        _ => {
            *v = match u.int_in_range(0..=5u8)? {
                0 => serde_json::from_str(u.choose(&INTERESTING)?).unwrap_or(Value::Null),
                1 => Value::from(u.arbitrary::<i64>()?),
                2 => serde_json::Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
                3 => Value::from(u.arbitrary::<String>()?),
                4 => {
                    let depth = u.int_in_range(1..=200usize)?;
                    serde_json::from_str(&format!("{}{}", "[".repeat(depth), "]".repeat(depth))).unwrap_or(Value::Null)
                }
                _ => Value::from(u.arbitrary::<bool>()?),
            };
            Ok(())
        }
    }
}

fn mutate(u: &mut Unstructured, input: &[u8], corpus: &[Vec<u8>]) -> arbitrary::Result<Vec<u8>> {
    let mut out = input.to_vec();
    if u.ratio(1u8, 2)?
        && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&out)
    {
        for _ in 0..u.int_in_range(1..=3u8)? {
            mutate_json(u, &mut v)?;
        }
        return Ok(serde_json::to_vec(&v).unwrap());
    }
    for _ in 0..u.int_in_range(1..=4u8)? {
        let len = out.len();
        let at = if len == 0 { 0 } else { u.choose_index(len)? };
        match u.int_in_range(0..=6u8)? {
            0 if len > 0 => out[at] ^= 1 << u.int_in_range(0..=7u8)?,
            1 if len > 0 => out[at] = u.arbitrary()?,
            2 => {
                let bytes: Vec<u8> = (0..u.int_in_range(1..=16usize)?).map(|_| u.arbitrary()).collect::<arbitrary::Result<_>>()?;
                out.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let end = (at + u.int_in_range(1..=64usize)?).min(len);
                out.drain(at..end);
            }
            4 => {
                let other = u.choose(corpus)?;
                if !other.is_empty() {
                    let from = u.choose_index(other.len())?;
                    out.truncate(at);
                    out.extend_from_slice(&other[from..]);
                }
            }
            5 => {
                let s = u.choose(&INTERESTING)?;
                out.splice(at..at, s.bytes());
            }
            // An 8-byte little-endian length: safetensors headers and the like.
            _ if len >= 8 => {
                let at = at.min(len - 8);
                let v: u64 = *u.choose(&[0, 1, 7, 8, u32::MAX as u64, u64::MAX, (len as u64).wrapping_sub(8), 1 << 40])?;
                out[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => out.truncate(at),
        }
    }
    Ok(out)
}

fn read_dir_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn hex(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// How many new inputs a long run adds to a target's committed corpus.
const SAVED_PER_RUN: usize = 48;

struct Report {
    target: &'static str,
    executions: u64,
    corpus: usize,
    findings: Vec<String>,
}

thread_local! {
    static IN_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on `input`; a panic or a slow call is a finding, saved under regressions/.
fn run_one(name: &str, f: Target, input: &[u8], current: &Path, regressions: &Path, findings: &mut Vec<String>) -> Option<String> {
    let _ = std::fs::write(current, input);
    let start = Instant::now();
    IN_TARGET.set(true);
    let result = catch_unwind(AssertUnwindSafe(|| f(input)));
    IN_TARGET.set(false);
    let elapsed = start.elapsed();
    let finding = match &result {
        Err(panic) => Some(format!("panic: {}", panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied()).unwrap_or("?"))),
        Ok(_) if elapsed > Duration::from_secs(2) => Some(format!("slow: {elapsed:.1?}")),
        Ok(_) => None,
    };
    if let Some(what) = finding {
        std::fs::create_dir_all(regressions).unwrap();
        let file = regressions.join(hex(input));
        if !file.exists() {
            std::fs::write(&file, input).unwrap();
            findings.push(format!("{name}: {what} ({})", file.display()));
        } else {
            findings.push(format!("{name}: {what} (still: {})", file.display()));
        }
    }
    result.ok().flatten()
}

fn fuzz(name: &'static str, f: Target, seconds: f64, seed: u64, save: bool) -> Report {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let corpus_dir = root.join("corpus").join(name);
    let regressions = root.join("regressions").join(name);
    let current = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-current-{name}"));
    let mut findings = Vec::new();
    let mut seen = HashSet::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let verbose = std::env::var("FUZZ_VERBOSE").is_ok_and(|v| v == "1");
    for (_, input) in read_dir_files(&corpus_dir).into_iter().chain(read_dir_files(&regressions)) {
        if let Some(o) = run_one(name, f, &input, &current, &regressions, &mut findings) {
            if verbose && !seen.contains(&o) {
                eprintln!("{name} corpus: {o}");
            }
            seen.insert(o);
        }
        corpus.push(input);
    }
    assert!(!corpus.is_empty(), "no corpus for {name} in {}", corpus_dir.display());
    let committed = corpus.len();
    let mut rng = Rng((seed ^ (name.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut executions = corpus.len() as u64;
    while Instant::now() < deadline {
        let entropy = rng.bytes(256);
        let mut u = Unstructured::new(&entropy);
        let Ok(parent) = u.choose(&corpus).cloned() else { continue };
        let Ok(input) = mutate(&mut u, &parent, &corpus) else { continue };
        if input.len() > 8 << 20 {
            continue;
        }
        executions += 1;
        if let Some(o) = run_one(name, f, &input, &current, &regressions, &mut findings)
            && !seen.contains(&o)
            && corpus.len() < committed + 256
        {
            if verbose {
                eprintln!("{name} new: {o}");
            }
            seen.insert(o);
            corpus.push(input);
        }
    }
    if save {
        // The smallest new inputs, so that the committed corpus stays small.
        let mut new: Vec<&Vec<u8>> = corpus[committed..].iter().filter(|i| i.len() <= 32 << 10).collect();
        new.sort_by_key(|i| i.len());
        std::fs::create_dir_all(&corpus_dir).unwrap();
        for input in new.into_iter().take(SAVED_PER_RUN) {
            std::fs::write(corpus_dir.join(hex(input)), input).unwrap();
        }
    }
    let _ = std::fs::remove_file(&current);
    Report { target: name, executions, corpus: corpus.len(), findings }
}

/// Caps the address space at `mb` MiB (natively on Linux): an allocation past it fails and aborts.
fn cap_memory(mb: u64) {
    #[cfg(target_os = "linux")]
    {
        let bytes = mb << 20;
        let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
        // SAFETY: setrlimit reads the struct it is given; lowering our own limit cannot break memory safety.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
        assert_eq!(rc, 0, "setrlimit(RLIMIT_AS, {mb} MiB) failed");
    }
}

fn main() {
    cap_memory(std::env::var("FUZZ_MEMORY_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(6144));
    let seconds: f64 = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let save = std::env::var("FUZZ_SAVE").is_ok_and(|v| v == "1");
    let only: Option<Vec<String>> = std::env::var("FUZZ_TARGETS").ok().map(|s| s.split(',').map(String::from).collect());
    // Panics inside a target are findings, reported below; their default messages would bury the summary.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !IN_TARGET.get() {
            default_hook(info);
        }
    }));
    let mut failed = Vec::new();
    let scaling_n: usize = std::env::var("FUZZ_SCALING_N").ok().and_then(|s| s.parse().ok()).unwrap_or(4000);
    if only.is_none() && scaling_n > 0 {
        failed.extend(scaling_checks(scaling_n));
    }
    for (name, f) in TARGETS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|t| t == name)) {
            continue;
        }
        let start = Instant::now();
        let r = fuzz(name, f, seconds, seed, save);
        println!(
            "fuzz {:<20} {:>9} executions in {:>6.1} s ({:>7.0}/s), corpus {:>4}, findings {}",
            r.target,
            r.executions,
            start.elapsed().as_secs_f64(),
            r.executions as f64 / start.elapsed().as_secs_f64(),
            r.corpus,
            r.findings.len()
        );
        failed.extend(r.findings);
    }
    if !failed.is_empty() {
        eprintln!("{} finding(s):\n{}", failed.len(), failed.join("\n"));
        std::process::exit(1);
    }
}
