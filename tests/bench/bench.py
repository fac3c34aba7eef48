#!/usr/bin/env python3
"""Benchmarks: our UNet step and decoder against diffusers on PyTorch CPU, same configs, same inputs.

    pip install torch diffusers safetensors
    cargo build --release --bin control-clip
    python3 tests/bench/bench.py [--models tiny,bk-sdm-tiny,sdxs-512,sd15] [--size 512] [--backends cpu,wgpu]

For each model it makes (once, cached under ~/.cache/control-clip/bench/) a folder with random-weight
`unet/` (and `decoder/`) saved by diffusers plus `io.safetensors` inputs, times diffusers (median of
--runs after one warm-up, torch threads = all cores), runs `control-clip bench` on the same folder for each
backend, and rewrites the "UNet and decoder" section of docs/benchmarks.md with the results side by side.
Speed is reported, never asserted. Not run by CI.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.path.expanduser("~/.cache/control-clip/bench")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/control-clip/target"))

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

MODELS = {
    # The parity fixtures' tiny UNet (committed), for a quick run.
    "tiny": dict(unet=os.path.join(ROOT, "tests/fixtures/unet/sd-tiny"), context=16, decoder=None, size_default=64),
    "bk-sdm-tiny": dict(unet=BK_SDM_TINY_UNET, context=768, decoder=TAESD),
    "sdxs-512": dict(unet=SDXS_512_UNET, context=1024, decoder=TAESD),
    "sd15": dict(unet=SD15_UNET, context=768, decoder=TAESD),
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
    return folder


def time_reference(folder, runs):
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
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,bk-sdm-tiny")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--backends", default="cpu,wgpu")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary", help="control-clip binary (default: the release build)")
    args = ap.parse_args()
    binary = args.binary or os.path.join(TARGET, "release", "control-clip")
    if not os.path.exists(binary):
        sys.exit("build the CLI first (cargo build --release --bin control-clip) or pass --binary")
    rows = []
    for name in args.models.split(","):
        size = MODELS[name].get("size_default", args.size) if name == "tiny" else args.size
        folder = prepare(name, size)
        ref = time_reference(folder, args.runs)
        for backend in args.backends.split(","):
            out = subprocess.run([binary, "bench", "--dir", folder, "--backend", backend, "--runs", str(args.runs)],
                                 capture_output=True, text=True)
            ours = json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()[-200:]}
            rows.append((name, size, backend, ours, ref))
            print(name, size, backend, ours, ref, flush=True)
    write_report(rows, args)


def fmt(v):
    return "—" if v is None else ("%.1f" % v)


def write_report(rows, args):
    title = "## UNet and decoder, random weights, %d², %s" % (args.size, args.backends)
    lines = [title, "",
             "Command: `python3 tests/bench/bench.py --models %s --size %d --backends %s --runs %d` (%s)."
             % (args.models, args.size, args.backends, args.runs,
                "dev-profile binary: dependencies at opt-level 3, our crate at 1" if args.binary and "/debug/" in args.binary
                else "release binary"),
             "Machine: %s, %d cores, torch %s (threads %d). Batch 1 (classifier-free guidance doubles the UNet batch); decoder = a TAESD-shaped AutoencoderTiny."
             % (platform.platform(), os.cpu_count(), torch.__version__, torch.get_num_threads()), "",
             "Here `wgpu` is Mesa's lavapipe (software Vulkan on the CPU): a correctness platform, not a speed one. "
             "Medians of --runs after one warm-up; peak RSS is the whole process (lavapipe's GPU memory is host memory).",
             "",
             "| model | image | ours: backend | ours: UNet step ms | PyTorch CPU: UNet step ms | ratio ours/PyTorch | ours: decoder ms | PyTorch: decoder ms | ours: peak RSS MiB | ours: device pool MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, size, backend, ours, ref in rows:
        u, r = ours.get("unet_step_ms"), ref.get("unet_step_ms")
        ratio = "%.2f" % (u / r) if u and r else "—"
        lines.append("| %s | %d² | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, size, backend, fmt(u), fmt(r), ratio, fmt(ours.get("decoder_ms")), fmt(ref.get("decoder_ms")),
            fmt(ours.get("peak_rss_mib")), fmt(ours.get("device_reserved_mib"))))
    section = "\n".join(lines) + "\n"
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    text = open(path).read()
    start = text.find(title + "\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    open(path, "w").write(text)
    print("updated", path)


if __name__ == "__main__":
    main()
