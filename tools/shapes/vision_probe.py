#!/usr/bin/env python3
"""Reads a CLIP vision tower on rendered pictures, for comparing vision-phase choices in short runs of
equal cost without a text phase: category (and per style of the picture), colour and style accuracy.

    python3 tools/shapes/vision_probe.py --clip FOLDER [--work WORK] --data DATA/val \
        [--linear-probe DATA/train --probe-count 8000] [--out probe.json]

Two reads, either or both:
- `--work WORK` (a train_clip.py work folder): the vision phase's own classifier heads from WORK/vision.pt,
  with its weights (FOLDER gives the config; a checkpoint deepened by --vision-layers is grown to match).
  The heads restart in every run, so after a few hundred steps they trail what the features hold.
- `--linear-probe DATA/train`: a multinomial logistic regression (L-BFGS, standardised features, a small L2)
  fitted on the frozen pooled features of the first --probe-count training pictures, read on --data: the
  features alone, whatever the heads.
Use a picture set rendered from its own seed for --data, not the held-out set the CLIP gate reads.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from train_clip import HEADS, grow_vision, image_features  # noqa: E402


def truth(labels, key):
    return torch.tensor([HEADS[key].index(l[key]) for l in labels])


def accuracy(right, labels, key):
    out = {key: round(right.float().mean().item(), 4)}
    if key == "category":
        out["category_by_style"] = common.accuracy_by_style(right, labels)
    return out


def linear_probe(train_features, train_labels, features, labels):
    mu, sd = train_features.mean(0), train_features.std(0) + 1e-6
    x, v = (train_features - mu) / sd, (features - mu) / sd
    result = {}
    for key, names in HEADS.items():
        y = truth(train_labels, key)
        w = torch.zeros(x.shape[1], len(names), requires_grad=True)
        b = torch.zeros(len(names), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ w + b, y) + 1e-4 * (w ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            result.update(accuracy((v @ w + b).argmax(1) == truth(labels, key), labels, key))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--work")
    ap.add_argument("--data", required=True)
    ap.add_argument("--linear-probe", metavar="TRAIN")
    ap.add_argument("--probe-count", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    if not args.work and not args.linear_probe:
        ap.error("give --work, --linear-probe or both")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = CLIPModel.from_pretrained(args.clip).float()
    result = {"clip": args.clip}
    heads = None
    if args.work:
        state = torch.load(os.path.join(args.work, "vision.pt"), map_location="cpu", weights_only=False)
        layers = len({k.split(".")[2] for k in state["vision"] if k.startswith("encoder.layers.")})
        model = grow_vision(model, layers)
        model.vision_model.load_state_dict(state["vision"])
        hidden = model.config.vision_config.hidden_size
        heads = nn.ModuleDict({k: nn.Linear(hidden, len(v)) for k, v in HEADS.items()})
        heads.load_state_dict(state["heads"])
        result.update(work=args.work, step=state["step"])
    model.eval()
    labels = common.read_labels(args.data)
    cpu = torch.device("cpu")
    features = image_features(model, common.load_images(args.data, labels), cpu)
    result["pictures"] = len(labels)
    if heads is not None:
        result["heads"] = {}
        with torch.no_grad():
            for k in HEADS:
                result["heads"].update(accuracy(heads[k](features).argmax(1) == truth(labels, k), labels, k))
    if args.linear_probe:
        train_labels = common.read_labels(args.linear_probe)
        train_images = common.load_images(args.linear_probe, train_labels)[:args.probe_count]
        result["linear_probe"] = linear_probe(image_features(model, train_images, cpu), train_labels[:args.probe_count],
                                              features, labels)
    print(json.dumps(result))
    if args.out:
        common.write_json(args.out, result)


if __name__ == "__main__":
    main()
