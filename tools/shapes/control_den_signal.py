#!/usr/bin/env python3
"""How much the frozen UNet's denoising loss says about style (issue 27; docs/control-results.md).

    python3 tools/shapes/control_den_signal.py --pipeline tools/shapes/model/pipeline --data DATA/minimal10

For every labelled picture of DATA (labels.jsonl with category, color, style) and a few training
timesteps t, the UNet's ε-prediction error on the same noisy latents (one noise draw per t, seed 0) under
E's context of four prompts: the style by name, the style described in words (the base model's training
captions), a *wrong* style described, and no style at all. Also the error in x0 terms, ε-MSE · (1 − ᾱ_t) / ᾱ_t.
If the right description barely beats the wrong one, the denoising term L_den has little to learn from
per picture and step.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from domain import STYLES, descriptive_prompt, plain_prompt, style_name_prompt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--timesteps", default="200,500,800,950,990")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, safety_checker=None, requires_safety_checker=False,
                                                   torch_dtype=torch.float32)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    lines = [json.loads(line) for line in open(os.path.join(args.data, "labels.jsonl")) if line.strip()]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(os.path.join(args.data, r["file"])).convert("RGB"),
                                                 dtype=np.float32) / 255.0).permute(2, 0, 1) * 2 - 1 for r in lines])
    kinds = {
        "style name": [style_name_prompt(r["category"], r["color"], r["style"]) for r in lines],
        "described": [descriptive_prompt(r["category"], r["color"], r["style"]) for r in lines],
        "wrong style described": [descriptive_prompt(r["category"], r["color"], STYLES[(STYLES.index(r["style"]) + 1) % len(STYLES)])
                                  for r in lines],
        "no style": [plain_prompt(r["category"], r["color"]) for r in lines],
    }
    print("| t | " + " | ".join(f"{k}: ε-MSE (x0)" for k in kinds) + " |")
    print("|---" * (len(kinds) + 1) + "|")
    with torch.no_grad():
        z0 = pipe.vae.encode(x).latents * pipe.vae.config.scaling_factor
        contexts = {}
        for k, prompts in kinds.items():
            ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
            contexts[k] = pipe.text_encoder(ids)[0]
        g = torch.Generator().manual_seed(0)
        for t in [int(v) for v in args.timesteps.split(",")]:
            noise = torch.randn(z0.shape, generator=g)
            zt = sched.add_noise(z0, noise, torch.full((len(lines),), t))
            a = sched.alphas_cumprod[t].item()
            cells = []
            for k in kinds:
                mse = ((pipe.unet(zt, t, encoder_hidden_states=contexts[k]).sample - noise) ** 2).mean().item()
                cells.append(f"{mse:.5f} ({mse * (1 - a) / a:.4f})")
            print(f"| {t} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
