#!/usr/bin/env python3
"""Parity fixture on the trained default model: diffusers' StableDiffusionPipeline from fixed latents.

    python3 tools/shapes/parity.py --model tools/shapes/model/pipeline --out tests/fixtures/pipeline/shapes-default

Loads the committed pipeline folder (f16 weights, widened to f32, exactly what the f16 bundle gives our
pipeline), runs the scheduler the folder names at the bundle's recommended steps and guidance, from seeded
latents, and writes io.safetensors (latents, image in [0, 1], CHW) and request.json. tests/suite/parity_default.rs
runs our pipeline on www/models/default from the same latents.
"""
import argparse
import json
import os

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt", default="a red star with stripes")
    ap.add_argument("--negative-prompt", default="")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=77)
    args = ap.parse_args()
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    size = 128
    factor = 2 ** (len(pipe.vae.config.decoder_block_out_channels) - 1)
    g = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(1, pipe.unet.config.in_channels, size // factor, size // factor, generator=g)
    image = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                 guidance_scale=args.guidance, height=size, width=size, latents=latents.clone(),
                 output_type="np").images[0]
    os.makedirs(args.out, exist_ok=True)
    save_file({"latents": latents, "image": torch.from_numpy(image).permute(2, 0, 1).contiguous()},
              os.path.join(args.out, "io.safetensors"))
    request = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance,
                   width=size, height=size, scheduler=pipe.scheduler.__class__.__name__)
    with open(os.path.join(args.out, "request.json"), "w") as f:
        json.dump(request, f, indent=1)
    print(f"{args.out}: {request}, image mean {image.mean():.4f}")


if __name__ == "__main__":
    main()
