#!/usr/bin/env python3
"""The autoencoder's gate: does the judge still read every label off its reconstructions?

    python3 tools/shapes/ae_gate.py --autoencoder DIR --data DATA/heldout --judge tools/shapes/model/judge \
        [--device cuda] [--out gate.json]

Encodes and decodes every held-out render (as the pipeline decodes: scaled latents, through the decoder's
clamp) and has the independent judge classify the reconstructions. The gate (docs/default-model.md):
category, colour and style each >= 98 %, and every single style >= 95 %. Prints the figures as JSON and
exits 1 when the gate does not hold.
"""
import argparse
import json
import os
import sys

import torch
from diffusers import AutoencoderTiny

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import judge  # noqa: E402

HEAD_GATE, STYLE_GATE = 0.98, 0.95


def reconstruct(ae, images_u8, device, batch=256):
    out = []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            x = images_u8[i:i + batch].to(device).float() / 127.5 - 1.0
            y = ae.decode(ae.encode(x).latents).sample
            out.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(out)


def gate(autoencoder, data, judge_dir, device):
    labels = common.read_labels(data)
    images = common.load_images(data, labels)
    ae = AutoencoderTiny.from_pretrained(autoencoder).float().eval().to(device)
    rec = reconstruct(ae, images, device)
    mse = ((rec.float() - images.to(device).float()) / 127.5).pow(2).mean().item()
    acc, per_style = judge.accuracy(judge.predict(judge.load_judge(judge_dir), rec), labels)
    ok = min(acc.values()) >= HEAD_GATE and min(per_style.values()) >= STYLE_GATE
    return {"autoencoder": autoencoder, "pictures": len(labels), "reconstruction_mse": round(mse, 6),
            "accuracy": acc, "style_accuracy": per_style, "gate": ok}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--autoencoder", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--judge", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "model", "judge"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out")
    args = ap.parse_args()
    result = gate(args.autoencoder, args.data, args.judge, torch.device(args.device))
    print(json.dumps(result))
    if args.out:
        common.write_json(args.out, result)
    sys.exit(0 if result["gate"] else 1)


if __name__ == "__main__":
    main()
