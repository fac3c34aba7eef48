#!/usr/bin/env python3
"""The independent judge: a small CNN that reads category, colour and style off a 128x128 picture.

    python3 tools/shapes/judge.py train --data DATA/train --heldout DATA/heldout --out models/judge
    python3 tools/shapes/judge.py classify --judge models/judge --folder DIR   (DIR/labels.jsonl names the files)

Trained on rendered pictures only, never on generated ones, and unrelated to every model it judges (no
CLIP, no autoencoder). `train` reports its accuracy on the held-out renders (another seed) and refuses to
save a judge under 97 % on any head. `classify` adds "pred_category", "pred_color", "pred_style" to each
line of labels.jsonl and writes DIR/judged.jsonl.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from domain import CATEGORIES, COLORS, STYLES  # noqa: E402

HEADS = {"category": CATEGORIES, "color": COLORS, "style": STYLES}


class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        chans = [3, 24, 48, 64, 96, 128]
        layers = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
            if i > 0:  # a second conv per stage, except at full resolution where it would cost the most
                layers += [nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({k: nn.Linear(chans[-1] * 2, len(v)) for k, v in HEADS.items()})

    def forward(self, x_u8):
        x = x_u8.float() / 127.5 - 1.0
        f = self.features(x)
        f = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        return {k: h(f) for k, h in self.heads.items()}


def targets(labels):
    return {k: torch.tensor([v.index(l[k]) for l in labels]) for k, v in HEADS.items()}


def predict(model, images, batch=128):
    """Predicted class indices per head for uint8 [N, 3, 128, 128] pictures, on the pictures' device."""
    model.eval().to(images.device)
    out = {k: [] for k in HEADS}
    with torch.no_grad():
        for i in range(0, len(images), batch):
            for k, v in model(images[i:i + batch]).items():
                out[k].append(v.argmax(1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def accuracy(pred, labels):
    """Per-head accuracy over the labels that name the head, and the style accuracy per style."""
    acc = {}
    for k, names in HEADS.items():
        have = [i for i, l in enumerate(labels) if l.get(k)]
        if have:
            acc[k] = round(sum(names[int(pred[k][i])] == labels[i][k] for i in have) / len(have), 4)
    per_style = {}
    for s in STYLES:
        have = [i for i, l in enumerate(labels) if l.get("style") == s]
        if have:
            per_style[s] = round(sum(STYLES[int(pred["style"][i])] == s for i in have) / len(have), 4)
    return acc, per_style


def train(args):
    torch.manual_seed(args.seed)
    labels = common.read_labels(args.data)
    images = common.load_images(args.data, labels)
    y = targets(labels)
    held_labels = common.read_labels(args.heldout)
    held = common.load_images(args.heldout, held_labels)
    held_y = targets(held_labels)
    model = Judge()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.1)
    log = common.Log(os.path.join(args.out + ".log.jsonl"))
    for step in range(args.steps):
        model.train()
        idx = common.batch_indices(args.seed, step, len(labels), args.batch)
        x = images[idx]
        # Flips and 90-degree turns keep every label; they make the judge look at shapes, not positions.
        g = common.step_generator(args.seed, step, 5)
        if torch.rand(1, generator=g).item() < 0.5:
            x = x.flip(3)
        x = torch.rot90(x, int(torch.randint(4, (1,), generator=g)), (2, 3))
        out = model(x)
        loss = sum(F.cross_entropy(out[k], y[k][idx]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0:
            log(step + 1, args.steps, loss=loss.item())
    pred = predict(model, held)
    acc = {k: (pred[k] == held_y[k]).float().mean().item() for k in HEADS}
    print("held-out accuracy:", json.dumps(acc))
    if min(acc.values()) < 0.97:
        sys.exit(f"the judge is under 97 % on a head ({acc}); not saved")
    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(args.out, "judge.safetensors"))
    common.write_json(os.path.join(args.out, "judge.json"),
                      {"heldout": args.heldout, "heldout_pictures": len(held_labels), "accuracy": acc,
                       "steps": args.steps, "batch": args.batch, "seed": args.seed})


def load_judge(folder):
    model = Judge()
    model.load_state_dict(load_file(os.path.join(folder, "judge.safetensors")))
    return model.eval()


def classify(args):
    model = load_judge(args.judge)
    labels = common.read_labels(args.folder)
    images = common.load_images(args.folder, labels, cache=False)
    pred = predict(model, images)
    with open(os.path.join(args.folder, "judged.jsonl"), "w") as f:
        for i, l in enumerate(labels):
            l = dict(l, **{f"pred_{k}": HEADS[k][int(pred[k][i])] for k in HEADS})
            f.write(json.dumps(l) + "\n")
    for k in HEADS:
        have = [i for i, l in enumerate(labels) if l.get(k)]
        if have:
            acc = sum(HEADS[k][int(pred[k][i])] == labels[i][k] for i in have) / len(have)
            print(f"{k}: {acc:.4f} over {len(have)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--heldout", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=2500)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--seed", type=int, default=4)
    c = sub.add_parser("classify")
    c.add_argument("--judge", required=True)
    c.add_argument("--folder", required=True)
    args = ap.parse_args()
    train(args) if args.cmd == "train" else classify(args)


if __name__ == "__main__":
    main()
