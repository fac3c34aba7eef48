#!/usr/bin/env python3
"""Benchmark: peak memory of `control-clip bundle` on a real-size SD-1.5-shaped pipeline folder and on the same
weights as a single-file checkpoint.

    pip install torch transformers diffusers safetensors
    python3 tests/bench/bench_bundle_memory.py [--binary PATH] [--work DIR]

Writes (once, cached in --work) a diffusers StableDiffusionPipeline folder with random weights in SD 1.5's
shapes, saved in f32 as `save_pretrained` does: UNet 860 M parameters (3.4 GB), CLIP ViT-L/14 text encoder,
the full AutoencoderKL, DDIM scheduler, the tokenizer as vocab.json + merges.txt (the real vocabulary from
tests/fixtures/tokenizer_files/real), and the same weights as one f32 single-file checkpoint in the LDM layout
(written with tests/fixtures/fixtures_single_file.py's `to_ldm`). Then runs `control-clip bundle --pipeline DIR
--dtype f16` and `control-clip bundle --checkpoint FILE --tokenizer DIR --dtype f16` (SD 1.5's built-in
configs: this also checks them against SD 1.5's real shapes) under GNU time, checks that the two bundles are
byte-identical, and prints a markdown section (peak RSS, wall time, bundle size) for docs/benchmarks.md.
Not run by CI.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/control-clip/target"))


def make_pipeline(folder):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    import bench  # the SD 1.5 shapes of tests/bench/bench.py

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=512,
                        block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**bench.CLIP_L)),
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(ROOT, "tests/fixtures/tokenizer_files/real")),
        unet=UNet2DConditionModel(**bench.SD15_UNET), scheduler=DDIMScheduler(**bench.SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    tok = os.path.join(folder, "tokenizer")
    for name in os.listdir(tok):
        os.remove(os.path.join(tok, name))
    for name in ["vocab.json", "merges.txt", "special_tokens_map.json"]:
        shutil.copy(os.path.join(ROOT, "tests/fixtures/tokenizer_files/real", name), tok)


def make_checkpoint(pipeline, path):
    """The pipeline's weights as one single-file checkpoint (f32, LDM names)."""
    import sys
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
    from fixtures_single_file import to_ldm

    state = to_ldm(UNet2DConditionModel.from_pretrained(os.path.join(pipeline, "unet")),
                   AutoencoderKL.from_pretrained(os.path.join(pipeline, "vae")),
                   CLIPTextModel.from_pretrained(os.path.join(pipeline, "text_encoder")))
    save_file(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def tensors(bundle):
    """Every tensor of a bundle's weights files: {(component, name): sha256}, `text_model.` dropped."""
    import hashlib
    from safetensors.numpy import load_file
    out = {}
    for f in sorted(os.listdir(bundle)):
        if f.endswith(".safetensors"):
            for name, value in load_file(os.path.join(bundle, f)).items():
                key = (f.split("-")[0].split(".")[0], name.removeprefix("text_model."))
                out[key] = hashlib.sha256(value.tobytes() + str(value.dtype).encode() + str(value.shape).encode()).hexdigest()
    return out


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(TARGET, "debug", "control-clip"))
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/control-clip/bench/sd15-pipeline"))
    args = ap.parse_args()
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    pipeline = os.path.join(args.work, "pipeline")
    if not os.path.exists(os.path.join(pipeline, "model_index.json")):
        make_pipeline(pipeline)
    checkpoint = os.path.join(args.work, "sd15-ldm.safetensors")
    if not os.path.exists(checkpoint):
        make_checkpoint(pipeline, checkpoint)
    tokenizer = os.path.join(ROOT, "tests/fixtures/tokenizer_files/real")
    rows = []
    for name, source in [("pipeline", ["--pipeline", pipeline]), ("checkpoint", ["--checkpoint", checkpoint, "--tokenizer", tokenizer])]:
        out = os.path.join(args.work, "bundle-" + name)
        shutil.rmtree(out, ignore_errors=True)
        run = subprocess.run(["/usr/bin/time", "-v", args.binary, "bundle", *source, "--dtype", "f16", "--out", out],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(run.stderr)
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", run.stderr).group(1)
        rows.append((name, out, peak_kb, wall))
    first, second = rows[0][1], rows[1][1]
    identical = tensors(first) == tensors(second)
    unet = os.path.getsize(os.path.join(pipeline, "unet", "diffusion_pytorch_model.safetensors"))
    print(f"## Memory of `bundle`: an SD-1.5-shaped pipeline and single-file checkpoint, f32 → f16\n")
    print(f"`python3 tests/bench/bench_bundle_memory.py` on {platform.machine()}, {os.cpu_count()} cores; "
          f"binary `{os.path.relpath(args.binary, TARGET)}` under the target folder.\n")
    print("| input | its size (f32) | bundle (f16) | peak RSS | wall time |\n|---|---|---|---|---|")
    sizes = {"pipeline": folder_bytes(pipeline), "checkpoint": os.path.getsize(checkpoint)}
    for name, out, peak_kb, wall in rows:
        print(f"| {name} | {sizes[name] / 1e9:.2f} GB | {folder_bytes(out) / 1e9:.2f} GB "
              f"| {peak_kb / 1024 / 1024:.2f} GiB | {wall} |")
    print(f"\nThe pipeline's UNet file alone: {unet / 1e9:.2f} GB. The two bundles' tensors are "
          f"{'identical' if identical else 'DIFFERENT'} (the text encoder's names compared without `text_model.`, "
          "which transformers ≥ 5.6 no longer writes and the LDM layout has; the manifests differ in the configs "
          "the checkpoint was read with: SD 1.5's built-in ones).")

if __name__ == "__main__":
    main()
