#!/usr/bin/env python3
"""Reads a CLIP vision phase's checkpoint (train_clip.py --work WORK) on rendered pictures: the accuracy of
its classifier heads (category, colour, style), and category per style of the picture.

    python3 tools/shapes/vision_probe.py --clip INIT --work WORK --data DATA/val [--out probe.json]

For comparing vision-phase choices in short runs of equal cost without a text phase; use a picture set
rendered from its own seed (not the held-out set the CLIP gate is measured on). INIT is any CLIPModel
folder of the same shape, or shallower (train_clip.py --vision-layers): the config is read from it, the
weights come from WORK/vision.pt.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
from transformers import CLIPModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from domain import STYLES  # noqa: E402
from train_clip import HEADS, grow_vision, pixel_values  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    model = CLIPModel.from_pretrained(args.clip).float()
    state = torch.load(os.path.join(args.work, "vision.pt"), map_location="cpu", weights_only=False)
    layers = len({k.split(".")[2] for k in state["vision"] if k.startswith("encoder.layers.")})
    model = grow_vision(model, layers)  # a run with --vision-layers deepened the tower
    model.vision_model.load_state_dict(state["vision"])
    hidden = model.config.vision_config.hidden_size
    heads = nn.ModuleDict({k: nn.Linear(hidden, len(v)) for k, v in HEADS.items()})
    heads.load_state_dict(state["heads"])
    model.eval()
    labels = common.read_labels(args.data)
    images = common.load_images(args.data, labels)
    with torch.no_grad():
        pooled = torch.cat([model.vision_model(pixel_values=pixel_values(images[i:i + 128])).pooler_output
                            for i in range(0, len(images), 128)])
    result = {"step": state["step"], "pictures": len(labels)}
    for k, names in HEADS.items():
        right = heads[k](pooled).argmax(1) == torch.tensor([names.index(l[k]) for l in labels])
        result[k] = round(right.float().mean().item(), 4)
        if k == "category":
            by = torch.tensor([STYLES.index(l["style"]) for l in labels])
            result["category_by_style"] = {s: round(right[by == i].float().mean().item(), 4) for i, s in enumerate(STYLES)}
    print(json.dumps(result))
    if args.out:
        common.write_json(args.out, dict(result, work=args.work, data=args.data))


if __name__ == "__main__":
    main()
