#!/usr/bin/env python3
"""Benchmarks: our UNet step, decoder and whole generation against diffusers on PyTorch CPU, same configs,
same inputs.

    pip install torch diffusers safetensors
    cargo build --release --bin control-clip
    python3 tests/bench/bench.py [--models tiny,bk-sdm-tiny,sdxs-512,sd15] [--size 512] [--backends cpu,wgpu]

For each model it makes (once, cached under ~/.cache/control-clip/bench/) a folder with random-weight
`unet/`, `decoder/` and `text_encoder/` saved by diffusers / transformers, the real CLIP tokenizer, a
scheduler config and `io.safetensors` inputs; times diffusers (median of --runs after one warm-up, torch
threads = all cores) on a UNet step, a decoder pass and a whole StableDiffusionPipeline generation
(--generation-steps steps, guidance 7.5); runs `control-clip bench` on the same folder for each backend;
and rewrites the "UNet and decoder" section of docs/benchmarks.md with the results side by side.
Speed is reported, never asserted. Not run by CI.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import torch
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.path.expanduser("~/.cache/control-clip/bench")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/control-clip/target"))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
# Shapes as published for the distilled UNets (random weights: only the shape matters for speed).
BK_SDM_TINY_UNET = dict(SD15_UNET, layers_per_block=1, mid_block_type=None, block_out_channels=(320, 640, 1280),
                        down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3)
SDXS_512_UNET = dict(SD15_UNET, layers_per_block=1, mid_block_type=None, block_out_channels=(320, 640, 1280),
                     cross_attention_dim=1024, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                     down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3)
TAESD = dict(decoder_block_out_channels=(64, 64, 64, 64), encoder_block_out_channels=(64, 64, 64, 64))
# The text encoders these UNets ship with: OpenAI CLIP ViT-L/14 (SD 1.x, BK-SDM) and OpenCLIP ViT-H/14 (SD 2.x, SDXS).
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2, bos_token_id=0, pad_token_id=1)
CLIP_H = dict(CLIP_L, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
              hidden_act="gelu")
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, set_alpha_to_one=False, clip_sample=False, prediction_type="epsilon")
TOKENIZER = os.path.join(ROOT, "tests/fixtures/tokenizer.json")

MODELS = {
    # The parity fixtures' tiny UNet (committed), for a quick run.
    "tiny": dict(unet=os.path.join(ROOT, "tests/fixtures/unet/sd-tiny"), context=16, decoder=None, text_encoder=None,
                 size_default=64),
    "bk-sdm-tiny": dict(unet=BK_SDM_TINY_UNET, context=768, decoder=TAESD, text_encoder=CLIP_L),
    "sdxs-512": dict(unet=SDXS_512_UNET, context=1024, decoder=TAESD, text_encoder=CLIP_H),
    "sd15": dict(unet=SD15_UNET, context=768, decoder=TAESD, text_encoder=CLIP_L),
}


def prepare(name, size):
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    spec = MODELS[name]
    folder = os.path.join(CACHE, "%s-%d" % (name, size))
    if not os.path.exists(os.path.join(folder, "io.safetensors")):
        os.makedirs(folder, exist_ok=True)
        torch.manual_seed(0)
        unet = (UNet2DConditionModel.from_pretrained(spec["unet"]) if isinstance(spec["unet"], str)
                else UNet2DConditionModel(**spec["unet"]))
        unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
        if spec["decoder"]:
            AutoencoderTiny(**spec["decoder"]).save_pretrained(os.path.join(folder, "decoder"), safe_serialization=True)
        g = torch.Generator().manual_seed(1)
        lat = size // 8
        save_file({"sample": torch.randn(1, 4, lat, lat, generator=g), "timestep": torch.tensor([500.0]),
                   "encoder_hidden_states": torch.randn(1, 77, spec["context"], generator=g),
                   "latents": torch.randn(1, 4, lat, lat, generator=g)}, os.path.join(folder, "io.safetensors"))
    if spec["text_encoder"] and not os.path.exists(os.path.join(folder, "text_encoder")):
        from diffusers import DDIMScheduler
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(2)
        CLIPTextModel(CLIPTextConfig(**spec["text_encoder"])).save_pretrained(os.path.join(folder, "text_encoder"))
        shutil.copy(TOKENIZER, os.path.join(folder, "tokenizer.json"))
        DDIMScheduler(**SCHEDULER).save_config(os.path.join(folder, "scheduler"))
    return folder


def time_reference(folder, runs, generation_steps):
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from safetensors.torch import load_file

    io = load_file(os.path.join(folder, "io.safetensors"))
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).eval()

    def median_ms(fn):
        fn()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        return sorted(times)[len(times) // 2]

    with torch.no_grad():
        result = {"unet_step_ms": median_ms(lambda: unet(io["sample"], io["timestep"], io["encoder_hidden_states"]))}
        if os.path.exists(os.path.join(folder, "decoder")):
            dec = AutoencoderTiny.from_pretrained(os.path.join(folder, "decoder")).eval()
            result["decoder_ms"] = median_ms(lambda: dec.decode(io["latents"]))
        if os.path.exists(os.path.join(folder, "text_encoder")):
            from diffusers import DDIMScheduler, StableDiffusionPipeline
            from transformers import CLIPTextModel, CLIPTokenizer

            pipe = StableDiffusionPipeline(
                vae=dec, unet=unet, text_encoder=CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")),
                tokenizer=CLIPTokenizer(tokenizer_file=os.path.join(folder, "tokenizer.json"), model_max_length=77),
                scheduler=DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler")), safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
            size = io["sample"].shape[-1] * 8
            result["generation_ms"] = median_ms(lambda: pipe(
                "a cat in Pokemon style", num_inference_steps=generation_steps, guidance_scale=7.5, height=size,
                width=size, generator=torch.Generator().manual_seed(0), output_type="np"))
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,bk-sdm-tiny")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--backends", default="cpu,wgpu")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--generation-steps", type=int, default=2)
    ap.add_argument("--binary", help="control-clip binary (default: the release build)")
    args = ap.parse_args()
    binary = args.binary or os.path.join(TARGET, "release", "control-clip")
    if not os.path.exists(binary):
        sys.exit("build the CLI first (cargo build --release --bin control-clip) or pass --binary")
    rows = []
    for name in args.models.split(","):
        size = MODELS[name].get("size_default", args.size) if name == "tiny" else args.size
        folder = prepare(name, size)
        ref = time_reference(folder, args.runs, args.generation_steps)
        for backend in args.backends.split(","):
            out = subprocess.run([binary, "bench", "--dir", folder, "--backend", backend, "--runs", str(args.runs),
                                  "--generation-steps", str(args.generation_steps)],
                                 capture_output=True, text=True)
            ours = json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()[-200:]}
            rows.append((name, size, backend, ours, ref))
            print(name, size, backend, ours, ref, flush=True)
    write_report(rows, args)


def fmt(v):
    return "—" if v is None else ("%.1f" % v)


def ratio(ours, ref):
    return "%.2f" % (ours / ref) if ours and ref else "—"


def write_report(rows, args):
    title = "## UNet, decoder and generation, random weights, %d², %s" % (args.size, args.backends)
    lines = [title, "",
             "Command: `python3 tests/bench/bench.py --models %s --size %d --backends %s --runs %d --generation-steps %d` (%s)."
             % (args.models, args.size, args.backends, args.runs, args.generation_steps,
                "dev-profile binary: every crate at opt-level 3, dependencies without debug assertions" if args.binary and "/debug/" in args.binary
                else "release binary"),
             "Machine: %s, %d cores, torch %s (threads %d). Batch 1 (classifier-free guidance doubles the UNet batch); decoder = a TAESD-shaped AutoencoderTiny; generation = "
             "prompt + empty negative prompt through the text encoder (CLIP ViT-L shape, ViT-H for SDXS), %d DDIM steps at guidance 7.5 (UNet batch 2), "
             "the decoder and the read-back of the pixels (diffusers: StableDiffusionPipeline, output_type np)."
             % (platform.platform(), os.cpu_count(), torch.__version__, torch.get_num_threads(), args.generation_steps), "",
             "Here `wgpu` is Mesa's lavapipe (software Vulkan on the CPU): a correctness platform, not a speed one. "
             "Medians of --runs after one warm-up; peak RSS is the whole process (lavapipe's GPU memory is host memory). "
             "Split: one more UNet step of ours with `control-clip bench`'s profile on (CPU backend only), in ms: "
             "convolutions / norms (GroupNorm, LayerNorm) / attention (scores, softmax, values) / the transformers' linear layers / the rest.",
             "",
             "| model | image | ours: backend | ours: UNet step ms | PyTorch CPU: UNet step ms | ratio ours/PyTorch | ours: decoder ms | PyTorch: decoder ms | ours: generation ms | PyTorch: generation ms | ratio | ours: peak RSS MiB | ours: device pool MiB | ours: UNet step split conv / norm / attention / linear / rest |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, size, backend, ours, ref in rows:
        u, r = ours.get("unet_step_ms"), ref.get("unet_step_ms")
        g, gr = ours.get("generation_ms"), ref.get("generation_ms")
        split = ours.get("unet_step_breakdown_ms")
        split = " / ".join("%.0f" % split[k] for k in ("conv", "norm", "attention", "linear", "rest")) if split else "—"
        lines.append("| %s | %d² | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, size, backend, fmt(u), fmt(r), ratio(u, r), fmt(ours.get("decoder_ms")), fmt(ref.get("decoder_ms")),
            fmt(g), fmt(gr), ratio(g, gr), fmt(ours.get("peak_rss_mib")), fmt(ours.get("device_reserved_mib")), split))
    old = read_section(title)
    if old is not None:
        # Rows of models this run did not measure stay (one model per run fits a session on slow backends);
        # they keep their own numbers, and the command line above names only this run's models.
        measured = {("| %s | %d² | %s |" % (name, size, backend)) for name, size, backend, _, _ in rows}
        kept = [l for l in old.splitlines() if l.startswith("| ") and not l.startswith("| model") and l.count("|") > 10
                and not any(l.startswith(m) for m in measured)]
        if kept:
            lines[2] = lines[2].replace("--models %s " % args.models, "--models MODEL ").replace(
                "` (", "`, one run per model of the table (", 1)
        lines.extend(kept)
    write_section(title, "\n".join(lines) + "\n")


def read_section(title):
    """The section of docs/benchmarks.md headed `title`, up to the next "## " heading; None if it has none."""
    text = open(DOC).read()
    start = text.find(title + "\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def write_section(title, section):
    """Replaces the section of docs/benchmarks.md headed `title` with `section`, or appends it."""
    text = open(DOC).read()
    start = text.find(title + "\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    open(DOC, "w").write(text)
    print("updated", DOC)


if __name__ == "__main__":
    main()
