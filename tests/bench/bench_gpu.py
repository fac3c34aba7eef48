#!/usr/bin/env python3
"""The GPU benchmark: our native wgpu (Vulkan) pipeline in f32 and f16 beside PyTorch on the GPU in fp32
and fp16, on the same random-weight models (tests/bench/bench.py's shapes) and inputs, with peak GPU memory.

    pip install torch diffusers transformers safetensors
    cargo build --release --bin control-clip
    python3 tests/bench/bench_gpu.py [--models bk-sdm-tiny,sdxs-512,sd15] [--size 512] [--device cuda]

For each model: a UNet step (batch 1), the TAESD-shaped decoder and a whole guided generation
(--generation-steps DDIM steps, guidance 7.5: the UNet at batch 2), medians of --runs after one warm-up.
PyTorch: diffusers' models and StableDiffusionPipeline in fp32 and fp16 (`.to(dtype)`), timed with
torch.cuda.synchronize; peak memory = torch.cuda.max_memory_allocated over the generation. Ours:
`control-clip bench --backend wgpu --precision f32|f16`; its memory is what burn's pool reserved after the
runs (pools keep their pages, so it is close to the peak; it counts pool pages, not live tensors).
Rewrites the "GPU: UNet step, decoder and generation" section of --doc (docs/benchmarks.md).
On the lent GPU machine tests/bench/gpu_bench.sh runs it. Speed is reported, never asserted; not run by CI.

`--device cpu --models tiny --size 64` runs the whole script here (torch on the CPU, lavapipe for
wgpu) to test it before a GPU call.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the models' shapes, their preparation, the section writer)

TITLE = "## GPU: UNet step, decoder and generation, ours (wgpu) vs PyTorch, f32 and f16"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_torch(folder, device, dtype, runs, generation_steps):
    from diffusers import AutoencoderTiny, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    io = {k: v.to(device, dtype) for k, v in load_file(os.path.join(folder, "io.safetensors")).items()}
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).to(device, dtype).eval()

    def median_ms(fn):
        fn()
        sync(device)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            sync(device)
            times.append((time.perf_counter() - t) * 1000)
        return sorted(times)[len(times) // 2]

    result = {}
    with torch.no_grad():
        result["unet_step_ms"] = median_ms(lambda: unet(io["sample"], io["timestep"], io["encoder_hidden_states"]))
        dec = None
        if os.path.exists(os.path.join(folder, "decoder")):
            dec = AutoencoderTiny.from_pretrained(os.path.join(folder, "decoder")).to(device, dtype).eval()
            result["decoder_ms"] = median_ms(lambda: dec.decode(io["latents"]))
        if dec is not None and os.path.exists(os.path.join(folder, "text_encoder")):
            pipe = StableDiffusionPipeline(
                vae=dec, unet=unet, text_encoder=CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")),
                tokenizer=CLIPTokenizer(tokenizer_file=os.path.join(folder, "tokenizer.json"), model_max_length=77),
                scheduler=DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler")), safety_checker=None,
                feature_extractor=None, requires_safety_checker=False).to(device, dtype)
            size = io["sample"].shape[-1] * 8
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            result["generation_ms"] = median_ms(lambda: pipe(
                "a cat in Pokemon style", num_inference_steps=generation_steps, guidance_scale=7.5, height=size,
                width=size, generator=torch.Generator(device).manual_seed(0), output_type="np"))
            if device == "cuda":
                result["peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    del unet
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def run_ours(binary, folder, precision, runs, generation_steps):
    out = subprocess.run([binary, "bench", "--dir", folder, "--backend", "wgpu", "--precision", precision,
                          "--runs", str(runs), "--generation-steps", str(generation_steps)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    return json.loads(out.stdout)


def fmt(v):
    return "—" if v is None else ("%.1f" % v)


def ratio(ours, ref):
    return "%.2f" % (ours / ref) if ours and ref else "—"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="bk-sdm-tiny,sdxs-512,sd15")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--generation-steps", type=int, default=4)
    ap.add_argument("--binary", help="control-clip binary (default: the release build)")
    ap.add_argument("--doc", default=bench.DOC, help="the benchmarks file whose GPU section is rewritten")
    ap.add_argument("--jsonl", help="also append each row as a JSON line here")
    args = ap.parse_args()
    binary = args.binary or os.path.join(bench.TARGET, "release", "control-clip")
    if not os.path.exists(binary):
        sys.exit("build the CLI first (cargo build --release --bin control-clip) or pass --binary")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (torch on the CPU: a test run of the script)"
    rows = []
    for name in args.models.split(","):
        folder = bench.prepare(name, args.size)
        t = time.time()
        ref = {p: time_torch(folder, args.device, dtype, args.runs, args.generation_steps)
               for p, dtype in (("f32", torch.float32), ("f16", torch.float16))}
        ours = {p: run_ours(binary, folder, p, args.runs, args.generation_steps) for p in ("f32", "f16")}
        row = {"model": name, "size": args.size, "ours": ours, "torch": ref, "seconds": time.time() - t}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")

    lines = [TITLE, "",
             "Command: `python3 tests/bench/bench_gpu.py --models %s --size %d --device %s --runs %d --generation-steps %d` "
             "(tests/bench/gpu_bench.sh on the lent machine)." % (args.models, args.size, args.device, args.runs, args.generation_steps),
             "Machine: %s; GPU: %s; torch %s. Random weights of each model's shape; UNet step at batch 1; decoder = "
             "TAESD-shaped; generation = text encoder, %d DDIM steps at guidance 7.5 (UNet batch 2), decoder, read-back. "
             "Ours: native wgpu (Vulkan), `control-clip bench --precision`; memory = burn's pool reserved after the runs. "
             "PyTorch: diffusers, `.to(dtype)`; memory = torch.cuda.max_memory_allocated over the generation."
             % (platform.platform(), gpu, torch.__version__, args.generation_steps), "",
             "| model | image | precision | ours: UNet step ms | PyTorch: UNet step ms | ratio | ours: decoder ms | PyTorch: decoder ms | ours: generation ms | PyTorch: generation ms | ratio | ours: GPU pool MiB | PyTorch: peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for p in ("f32", "f16"):
            o, r = row["ours"][p], row["torch"][p]
            if "error" in o:
                lines.append("| %s | %d² | %s | error: %s | %s | | | | | | | | |" % (row["model"], row["size"], p, o["error"].replace("|", "/")[:120], fmt(r.get("unet_step_ms"))))
                continue
            lines.append("| %s | %d² | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                row["model"], row["size"], p, fmt(o.get("unet_step_ms")), fmt(r.get("unet_step_ms")),
                ratio(o.get("unet_step_ms"), r.get("unet_step_ms")), fmt(o.get("decoder_ms")), fmt(r.get("decoder_ms")),
                fmt(o.get("generation_ms")), fmt(r.get("generation_ms")), ratio(o.get("generation_ms"), r.get("generation_ms")),
                fmt(o.get("device_reserved_mib")), fmt(r.get("peak_mib"))))
    bench.DOC = args.doc
    bench.write_section(TITLE, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
