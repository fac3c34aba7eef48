#!/usr/bin/env python3
"""Writes the trained default model as the folders we commit (f16 safetensors, each as its library saves it).

    python3 tools/shapes/export.py --runs WORK/models --out tools/shapes/model [--scheduler CLASS]

OUT/pipeline is a diffusers StableDiffusionPipeline folder (model_index.json, text_encoder/, tokenizer/,
unet/, vae/ (the AutoencoderTiny, encoder and decoder), scheduler/), so that diffusers loads it as it loads a
Stable Diffusion checkpoint; OUT/clip is the whole CLIPModel (both towers, both projections, logit_scale)
with its preprocessor_config.json, which Control-CLIP fine-tuning reads. f16 halves the size; the bundle is
f16 anyway, and every consumer widens to f32 on load.
"""
import argparse
import os
import shutil
import sys

from diffusers import AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="folder with clip/, autoencoder/, unet/, text_encoder/, scheduler/")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scheduler", default="DPMSolverMultistepScheduler",
                    help="diffusers scheduler class written into scheduler/ (same betas as training)")
    args = ap.parse_args()
    pipe = os.path.join(args.out, "pipeline")
    os.makedirs(pipe, exist_ok=True)
    half = dict(safe_serialization=True)

    clip = CLIPModel.from_pretrained(os.path.join(args.runs, "clip")).half()
    common.replace_dir(os.path.join(args.out, "clip"), lambda d: (
        clip.save_pretrained(d, **half),
        shutil.copy(os.path.join(args.runs, "clip", "preprocessor_config.json"), d),
        shutil.copy(common.TOKENIZER, os.path.join(d, "tokenizer.json"))))
    te = CLIPTextModel.from_pretrained(os.path.join(args.runs, "text_encoder")).half()
    common.replace_dir(os.path.join(pipe, "text_encoder"), lambda d: te.save_pretrained(d, **half))
    tok = CLIPTokenizerFast(tokenizer_file=common.TOKENIZER, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=77)
    common.replace_dir(os.path.join(pipe, "tokenizer"), lambda d: tok.save_pretrained(d))
    unet = UNet2DConditionModel.from_pretrained(os.path.join(args.runs, "unet")).half()
    common.replace_dir(os.path.join(pipe, "unet"), lambda d: unet.save_pretrained(d, **half))
    vae = AutoencoderTiny.from_pretrained(os.path.join(args.runs, "autoencoder")).half()
    common.replace_dir(os.path.join(pipe, "vae"), lambda d: vae.save_pretrained(d, **half))
    import diffusers
    train_sched = DDPMScheduler.from_pretrained(os.path.join(args.runs, "scheduler"))
    # The betas and timestep settings carry over; DDPM's own `variance_type` ("fixed_small", which the
    # multistep solvers ignore unless it is a learned one) does not.
    sched = getattr(diffusers, args.scheduler).from_config(train_sched.config, variance_type=None)
    common.replace_dir(os.path.join(pipe, "scheduler"), lambda d: sched.save_pretrained(d))
    common.write_json(os.path.join(pipe, "model_index.json"), {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", args.scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderTiny"]})
    for name in ("clip", "pipeline"):
        total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(args.out, name)) for f in fs)
        print(f"{name}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
