#!/usr/bin/env python3
"""Zero-shot accuracy of a CLIP model on rendered pictures: category, colour, and style two ways.

    python3 tools/shapes/clip_zero_shot.py --clip models/clip --data DATA/heldout [--checkpoint WORK/clip/checkpoint.pt]

Style is asked once with plain descriptions ("a red star with stripes", what the base model was trained
on) and once with the style names ("a red star in striped style", which its captions never contain): the
second is the gap Control-CLIP fine-tuning is for. Class embeddings average the prompts of every colour
(category, style) or category (colour).
"""
import argparse
import json
import os
import sys

import torch
from transformers import CLIPModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from domain import CATEGORIES, COLORS, STYLES, STYLE_DESCRIPTIONS, plain_prompt  # noqa: E402
from train_clip import config, pixel_values  # noqa: E402


def text_features(model, tok, prompts):
    with torch.no_grad():
        f = model.get_text_features(input_ids=tok(prompts))
        f = getattr(f, "pooler_output", f)
    return torch.nn.functional.normalize(f, dim=-1)


def class_embeddings(model, tok, groups):
    return torch.stack([text_features(model, tok, g).mean(0) for g in groups])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip")
    ap.add_argument("--checkpoint")
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    if args.checkpoint:
        model = CLIPModel(config())
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["model"])
    else:
        model = CLIPModel.from_pretrained(args.clip)
    model.eval()
    tok = common.ClipTokenizer()
    labels = common.read_labels(args.data)
    images = common.load_images(args.data, labels)
    with torch.no_grad():
        v = torch.cat([getattr(f, "pooler_output", f) for f in
                       (model.get_image_features(pixel_values=pixel_values(images[i:i + 128]))
                        for i in range(0, len(images), 128))])
    v = torch.nn.functional.normalize(v, dim=-1)
    heads = {
        "category": (CATEGORIES, [[plain_prompt(k, c) for c in COLORS] for k in CATEGORIES]),
        "color": (COLORS, [[plain_prompt(k, c) for k in CATEGORIES] for c in COLORS]),
        "style_descriptive": (STYLES, [[f"{plain_prompt(k, c)} {d}" for k in CATEGORIES for c in COLORS
                                        for d in STYLE_DESCRIPTIONS[s]] for s in STYLES]),
        "style_name": (STYLES, [[f"{plain_prompt(k, c)} in {s} style" for k in CATEGORIES for c in COLORS]
                                for s in STYLES]),
    }
    result = {}
    for head, (names, groups) in heads.items():
        e = torch.nn.functional.normalize(class_embeddings(model, tok, groups), dim=-1)
        pred = (v @ e.T).argmax(1)
        key = head.split("_")[0]
        truth = torch.tensor([names.index(l[key]) for l in labels])
        result[head] = round((pred == truth).float().mean().item(), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
