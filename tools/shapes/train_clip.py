#!/usr/bin/env python3
"""Stage 1 of the default model: a small CLIPModel trained contrastively on the shapes domain.

    python3 tools/shapes/train_clip.py --data DATA/train --work WORK/clip --out models/clip --steps N

The text tower is E, the generator's text encoder (frozen from here on); the vision tower and both
projections are what Control-CLIP fine-tuning needs to tell classes apart. Captions are drawn afresh each
step from the picture's labels (tools/shapes/domain.py: colour and category always, the style in plain
words a quarter of the time, never the style names). Several pictures in a batch share a description, so
the loss is contrastive with soft targets: every picture a caption truly describes is a positive.

Resumable: a checkpoint every --checkpoint-every steps in --work; rerunning the same command continues.
"""
import argparse
import os
import random
import shutil
import sys

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from domain import CATEGORIES, COLORS, STYLES, base_caption  # noqa: E402

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def config():
    text = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=64)
    vision = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  image_size=128, patch_size=16, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5,
                  projection_dim=64)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def preprocessor_config():
    # CLIPImageProcessor as transformers saves it: 128x128 in, nothing to resize or crop.
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 128},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": 128, "width": 128},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": MEAN,
            "image_std": STD, "do_convert_rgb": True}


def pixel_values(images_u8):
    x = images_u8.float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--describe-fraction", type=float, default=0.25)
    ap.add_argument("--checkpoint-every", type=int, default=250)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    os.makedirs(args.work, exist_ok=True)

    labels = common.read_labels(args.data)
    images = common.load_images(args.data, labels)
    cat = torch.tensor([CATEGORIES.index(l["category"]) for l in labels])
    col = torch.tensor([COLORS.index(l["color"]) for l in labels])
    sty = torch.tensor([STYLES.index(l["style"]) for l in labels])
    tok = common.ClipTokenizer()

    model = CLIPModel(config())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + torch.cos(torch.tensor(s / args.steps * 3.14159)).item()))
    ckpt_path = os.path.join(args.work, "checkpoint.pt")
    checkpoint = common.Checkpoint(ckpt_path, model=model, opt=opt, sched=sched)
    start = checkpoint.resume()
    log = common.Log(os.path.join(args.work, "log.jsonl"))

    model.train()
    for step in range(start, args.steps):
        idx = common.batch_indices(args.seed, step, len(labels), args.batch)
        crng = random.Random(args.seed * 1_000_003 + step)
        described = [crng.random() < args.describe_fraction for _ in idx]
        captions = [base_caption(crng, labels[i]["category"], labels[i]["color"], labels[i]["style"], d)
                    for i, d in zip(idx.tolist(), described)]
        ids = tok(captions)
        # The causal mask makes every position up to the first <|endoftext|> (the pooled one) independent
        # of what follows, so the padding after the longest caption changes nothing and is cut for speed.
        ids = ids[:, : int((ids != tok.eos).sum(1).max()) + 1]
        out = model(input_ids=ids, pixel_values=pixel_values(images[idx]))
        logits = out.logits_per_image  # [images, captions]
        ci, co, st = cat[idx], col[idx], sty[idx]
        d = torch.tensor(described)
        match = (ci[:, None] == ci[None, :]) & (co[:, None] == co[None, :]) & (~d[None, :] | (st[:, None] == st[None, :]))
        match = match.float()
        loss_i = -(match / match.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
        loss_t = -(match / match.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
        loss = 0.5 * (loss_i + loss_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        if (step + 1) % 25 == 0 or step == start:
            log(step + 1, args.steps, loss=loss.item(), logit_scale=model.logit_scale.exp().item(),
                lr=sched.get_last_lr()[0])
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            checkpoint.save(step + 1)

    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    common.write_json(os.path.join(tmp, "preprocessor_config.json"), preprocessor_config())
    shutil.copy(common.TOKENIZER, os.path.join(tmp, "tokenizer.json"))
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
