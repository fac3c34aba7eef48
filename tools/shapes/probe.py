#!/usr/bin/env python3
"""A quick probe of a trained UNet (diffusers' pipeline, read by the judge): not the evaluation protocol.

    python3 tools/shapes/probe.py --clip DIR --autoencoder DIR --unet RUN/unet --scheduler RUN/scheduler \
        --out DIR [--guidance 4,7] [--steps 15] [--device cuda]

Generates, for each guidance, 48 plain prompts (every (category, colour) pair once, seeds 600-647) and 96
descriptive ones (every pair with two styles, each style 16 times; seeds 700-795), has the judge classify
them and writes DIR/probe.json (accuracies, style by style) and DIR/grid-gG.png (rows: categories;
columns: styles; descriptive prompts). These seeds are disjoint from the evaluation seeds (1000 and up):
they are the ones settings and training variants are chosen with, so the evaluation never is.
Sampling: DPM-Solver++ 2M from the training schedule's betas (trailing spacing for zero-SNR schedules).
"""
import argparse
import itertools
import json
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderTiny, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline, \
    UNet2DConditionModel
from PIL import Image
from transformers import CLIPTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import judge  # noqa: E402
from domain import CATEGORIES, COLORS, STYLES, descriptive_prompt, plain_prompt  # noqa: E402
from train_unet import load_text_encoder  # noqa: E402


def tokenizer():
    return CLIPTokenizerFast(tokenizer_file=common.TOKENIZER, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=77)


def pipeline(clip, autoencoder, unet, scheduler, device):
    train = DDPMScheduler.from_pretrained(scheduler)
    sched = DPMSolverMultistepScheduler.from_config(train.config, variance_type=None)
    return StableDiffusionPipeline(
        vae=AutoencoderTiny.from_pretrained(autoencoder).float(), text_encoder=load_text_encoder(clip),
        tokenizer=tokenizer(), unet=UNet2DConditionModel.from_pretrained(unet).float(), scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False).to(device)


def probe_rows():
    rows = []
    for i, (k, c) in enumerate(itertools.product(CATEGORIES, COLORS)):
        rows.append(dict(kind="plain", prompt=plain_prompt(k, c), category=k, color=c, style=None, seed=600 + i))
    for i, (k, c) in enumerate(itertools.product(CATEGORIES, COLORS)):
        for j, st in enumerate((STYLES[i % 6], STYLES[(i + 3) % 6])):
            rows.append(dict(kind="descriptive", prompt=descriptive_prompt(k, c, st), category=k, color=c, style=st,
                             seed=700 + 2 * i + j))
    return rows


def generate(pipe, rows, steps, guidance, height, batch=48):
    out = []
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        gens = [torch.Generator().manual_seed(r["seed"]) for r in part]
        ims = pipe([r["prompt"] for r in part], num_inference_steps=steps, guidance_scale=guidance, height=height,
                   width=height, generator=gens, output_type="np").images
        out.append(torch.from_numpy((np.clip(ims, 0, 1) * 255).round().astype(np.uint8)).permute(0, 3, 1, 2))
    return torch.cat(out)


def grid(images, rows):
    """One descriptive picture per (category, style): rows categories, columns styles."""
    tiles = {}
    for im, r in zip(images, rows):
        if r["kind"] == "descriptive":
            tiles.setdefault((r["category"], r["style"]), im)
    size = images.shape[-1]
    canvas = np.full((len(CATEGORIES) * size, len(STYLES) * size, 3), 255, np.uint8)
    for (k, s), im in tiles.items():
        y, x = CATEGORIES.index(k) * size, STYLES.index(s) * size
        canvas[y:y + size, x:x + size] = im.permute(1, 2, 0).numpy()
    return Image.fromarray(canvas)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", required=True, help="CLIPModel folder (its text tower is E) or a CLIPTextModel folder")
    ap.add_argument("--autoencoder", required=True)
    ap.add_argument("--unet", required=True)
    ap.add_argument("--scheduler", required=True, help="the training run's scheduler folder")
    ap.add_argument("--judge", default=os.path.join(HERE, "model", "judge"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--guidance", default="4")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    pipe = pipeline(args.clip, args.autoencoder, args.unet, args.scheduler, args.device)
    pipe.set_progress_bar_config(disable=True)
    the_judge = judge.load_judge(args.judge)
    rows = probe_rows()
    result = {"unet": args.unet, "steps": args.steps, "by_guidance": {}}
    for g in [float(x) for x in args.guidance.split(",")]:
        images = generate(pipe, rows, args.steps, g, args.size)
        pred = judge.predict(the_judge, images)
        entry = {}
        for kind in ("plain", "descriptive"):
            sel = [i for i, r in enumerate(rows) if r["kind"] == kind]
            acc, per_style = judge.accuracy({h: p[sel] for h, p in pred.items()}, [rows[i] for i in sel])
            entry[kind] = dict(acc, **({"per_style": per_style} if per_style else {}))
        d = entry["descriptive"]
        # One number to rank variants by: the mean of the five accuracies, and the worst style beside it.
        entry["score"] = round(np.mean([entry["plain"]["category"], entry["plain"]["color"], d["category"],
                                        d["color"], d["style"]]), 4)
        entry["worst_style"] = min(d["per_style"].values())
        result["by_guidance"][f"{g:g}"] = entry
        grid(images, rows).save(os.path.join(args.out, f"grid-g{g:g}.png"))
        print(json.dumps({"guidance": g, **entry}), flush=True)
    common.write_json(os.path.join(args.out, "probe.json"), result)


if __name__ == "__main__":
    main()
