#!/usr/bin/env python3
"""Stage 1 of the default model: a small CLIPModel for the shapes domain, trained in two phases (LiT).

    python3 tools/shapes/train_clip.py --data DATA/train --work WORK/clip --out models/clip \
        --vision-steps N --text-steps M [--device cuda]

Phase 1 (vision): the vision tower learns to see the domain as a classifier of the render labels
(category, colour, style heads on its pooled output, flips and quarter turns as augmentation). The first
design trained both towers contrastively from scratch, and its vision tower never learned shapes
(zero-shot category 22.7 %), so nothing pushed the text tower to separate them either.
Phase 2 (text, "locked-image tuning", Zhai et al. 2022): the vision tower is locked; the text tower, both
projections and the temperature are trained contrastively against it. Captions are drawn afresh each step
from the picture's labels (tools/shapes/domain.py: colour and category always, the style in plain words a
quarter of the time, never the style names). Targets are label-aware (UniCL, Yang et al. 2022): every
picture a caption truly describes is a positive, not only its own.

The text tower is E, the generator's text encoder (frozen from here on); the vision tower and both
projections are what Control-CLIP fine-tuning reads. The classifier heads are not part of the CLIPModel
and are not saved with it.

Resumable: each phase checkpoints every --checkpoint-every steps in --work; rerunning the same command
continues. --max-seconds bounds each phase's wall time (the log says where a phase stopped).
"""
import argparse
import copy
import os
import random
import shutil
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from domain import CATEGORIES, COLORS, STYLES, base_caption  # noqa: E402

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
HEADS = {"category": CATEGORIES, "color": COLORS, "style": STYLES}


def config():
    text = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=64)
    # Patches of 8 pixels: a 128² picture is 256 patches, fine enough for a star's points and a 6-pixel checker.
    vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  image_size=128, patch_size=8, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5,
                  projection_dim=64)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def preprocessor_config():
    # CLIPImageProcessor as transformers saves it: 128x128 in, nothing to resize or crop.
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 128},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": 128, "width": 128},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": MEAN,
            "image_std": STD, "do_convert_rgb": True}


def grow_vision(model, layers):
    """The same CLIPModel with a deeper vision tower: a new layer after each old one (in turn, until there are
    `layers`), its attention output and second MLP projection zero, so that each new layer starts as the
    identity (pre-norm residual blocks) and the grown model computes exactly what the old one did."""
    old = model.config.vision_config.num_hidden_layers
    if layers <= old:
        return model
    cfg = copy.deepcopy(model.config)
    cfg.vision_config.num_hidden_layers = layers
    grown = CLIPModel(cfg).float()  # a folder saved in f16 says so in its config
    grown.load_state_dict({k: v for k, v in model.state_dict().items() if ".encoder.layers." not in k or "text" in k},
                          strict=False)
    new = layers - old
    order = []  # which old layer each grown layer is (None: a new one)
    for i in range(old):
        order.append(i)
        if i < new:
            order.append(None)
    order += [None] * (layers - len(order))
    for j, i in enumerate(order):
        target = grown.vision_model.encoder.layers[j]
        if i is None:
            for lin in (target.self_attn.out_proj, target.mlp.fc2):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        else:
            target.load_state_dict(model.vision_model.encoder.layers[i].state_dict())
    return grown


def pixel_values(images_u8):
    x = images_u8.float() / 255.0
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def patches(masks, patch):
    """[N, H, W] masks in [0, 1] -> [N, tokens, patch * patch], tokens in the ViT's row-major patch order."""
    n, h, w = masks.shape
    return masks.view(n, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4).reshape(n, -1, patch * patch)


def token_losses(dense, model, out, masks, category):
    """Token labelling (Jiang et al. 2021, "All Tokens Matter"): every patch token predicts the shape's
    silhouette inside its patch (per pixel) and the category where its patch is covered by the shape
    (background where not, in proportion). A dense signal of where the outline runs, whatever the fill:
    the textured fills are where the pooled classifier alone learned shape slowest (docs/default-model.md)."""
    tokens = model.vision_model.post_layernorm(out.last_hidden_state[:, 1:])
    target = patches(masks, model.config.vision_config.patch_size)
    silhouette = F.binary_cross_entropy_with_logits(dense["silhouette"](tokens).float(), target)
    cover = target.mean(-1, keepdim=True)
    onehot = F.one_hot(category, len(CATEGORIES)).float()[:, None, :]
    soft = torch.cat([cover * onehot, 1 - cover], -1)
    token = -(soft * F.log_softmax(dense["token"](tokens).float(), -1)).sum(-1).mean()
    return {"silhouette": silhouette, "token": token}


def train_vision(args, model, images, targets, device, log, masks=None):
    """Phase 1: the vision tower as a classifier of the labels (and with --token-labels, of every patch
    against the picture's silhouette). Returns the steps done."""
    hidden = model.config.vision_config.hidden_size
    heads = nn.ModuleDict({k: nn.Linear(hidden, len(v)) for k, v in HEADS.items()}).to(device)
    params = list(model.vision_model.parameters()) + list(heads.parameters())
    parts = {}
    if masks is not None:
        patch = model.config.vision_config.patch_size
        dense = nn.ModuleDict({"silhouette": nn.Linear(hidden, patch * patch),
                               "token": nn.Linear(hidden, len(CATEGORIES) + 1)}).to(device)
        params += list(dense.parameters())
        parts["dense"] = dense
    opt = torch.optim.AdamW(params, lr=args.vision_lr, weight_decay=0.05, betas=(0.9, 0.98))
    wsd = common.WsdSchedule(args.vision_steps, args.warmup, args.vision_decay_start, decay_fraction=0.7, floor=0.02,
                             budget_s=args.max_seconds)
    checkpoint = common.Checkpoint(os.path.join(args.work, "vision.pt"), vision=model.vision_model, heads=heads,
                                   opt=opt, wsd=wsd, **parts)
    start = checkpoint.resume()
    step = start
    model.vision_model.train()
    while step < wsd.steps:
        wsd.set_lr(opt, args.vision_lr, step, "vision")
        idx = common.batch_indices(args.seed, step, len(images), args.batch).to(device)
        g = common.step_generator(args.seed, step, 3)
        x = images[idx]
        if masks is not None:  # the silhouette travels with its picture through the augmentation
            x = torch.cat([x, masks[idx][:, None]], 1)
        if args.vision_augment == "affine":
            x = common.random_affine(x, g)
        else:
            x = common.dihedral(x, int(torch.randint(8, (1,), generator=g)))
        with common.autocast(device):
            out = model.vision_model(pixel_values=pixel_values(x[:, :3]))
            losses = {k: F.cross_entropy(h(out.pooler_output).float(), targets[k][idx]) for k, h in heads.items()}
            if masks is not None:
                dense_losses = token_losses(parts["dense"], model, out, x[:, 3].float() / 255.0,
                                            targets["category"][idx])
        loss = sum(losses.values())
        if masks is not None:
            loss = loss + args.token_labels * sum(dense_losses.values())
            losses.update(dense_losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 100 == 0 or step == start + 1:
            log(step, wsd.steps, phase="vision", loss=loss.item(), **{k: v.item() for k, v in losses.items()},
                lr=args.vision_lr * wsd(step - 1))
        if step % args.checkpoint_every == 0 or step == wsd.steps:
            checkpoint.save(step)
    checkpoint.save(step)
    return step, wsd


def image_features(model, images, device):
    """The locked vision tower's pooled output for every training picture (computed once)."""
    model.vision_model.eval()
    out = []
    with torch.no_grad(), common.autocast(device):
        for i in range(0, len(images), 512):
            out.append(model.vision_model(pixel_values=pixel_values(images[i:i + 512])).pooler_output.float())
    return torch.cat(out)


def train_text(args, model, labels, pooled, device, log):
    """Phase 2: text tower, both projections and the temperature against the locked vision tower."""
    model.vision_model.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if not n.startswith("vision_model.")]
    opt = torch.optim.AdamW(params, lr=args.text_lr, weight_decay=0.05, betas=(0.9, 0.98))
    wsd = common.WsdSchedule(args.text_steps, args.warmup, args.text_decay_start, decay_fraction=0.7, floor=0.02,
                             budget_s=args.max_seconds)
    checkpoint = common.Checkpoint(os.path.join(args.work, "text.pt"), model=model, opt=opt, wsd=wsd)
    start = checkpoint.resume()
    cat = torch.tensor([CATEGORIES.index(l["category"]) for l in labels], device=device)
    col = torch.tensor([COLORS.index(l["color"]) for l in labels], device=device)
    sty = torch.tensor([STYLES.index(l["style"]) for l in labels], device=device)
    tok = common.ClipTokenizer()
    cache = {}
    step = start
    model.text_model.train()
    while step < wsd.steps:
        wsd.set_lr(opt, args.text_lr, step, "text")
        idx = common.batch_indices(args.seed, step, len(labels), args.batch)
        crng = random.Random(args.seed * 1_000_003 + step)
        described = [crng.random() < args.describe_fraction for _ in idx]
        captions = [base_caption(crng, labels[i]["category"], labels[i]["color"], labels[i]["style"], d)
                    for i, d in zip(idx.tolist(), described)]
        for c in captions:
            if c not in cache:
                cache[c] = tok([c])[0]
        ids = torch.stack([cache[c] for c in captions])
        # The causal mask makes every position up to the first <|endoftext|> (the pooled one) independent
        # of what follows, so the padding after the longest caption changes nothing and is cut for speed.
        ids = ids[:, : int((ids != tok.eos).sum(1).max()) + 1].to(device)
        idx = idx.to(device)
        with common.autocast(device):
            text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
            image = model.visual_projection(pooled[idx])
        text = F.normalize(text.float(), dim=-1)
        image = F.normalize(image.float(), dim=-1)
        logits = model.logit_scale.exp() * image @ text.T  # [images, captions]
        ci, co, st = cat[idx], col[idx], sty[idx]
        d = torch.tensor(described, device=device)
        match = (ci[:, None] == ci[None, :]) & (co[:, None] == co[None, :]) & (~d[None, :] | (st[:, None] == st[None, :]))
        match = match.float()
        loss_i = -(match / match.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
        loss_t = -(match / match.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
        loss = 0.5 * (loss_i + loss_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        step += 1
        if step % 100 == 0 or step == start + 1:
            log(step, wsd.steps, phase="text", loss=loss.item(), logit_scale=model.logit_scale.exp().item(),
                lr=args.text_lr * wsd(step - 1))
        if step % args.checkpoint_every == 0 or step == wsd.steps:
            checkpoint.save(step)
    checkpoint.save(step)
    return step, wsd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vision-steps", type=int, default=3000)
    ap.add_argument("--text-steps", type=int, default=3000)
    ap.add_argument("--vision-decay-start", type=int, help="step where the learning rate starts to decay "
                    "(default: 70 %% of the steps, or where a --max-seconds budget puts it)")
    ap.add_argument("--text-decay-start", type=int, help="as --vision-decay-start, for the text phase")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--vision-lr", type=float, default=1e-3)
    ap.add_argument("--text-lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--describe-fraction", type=float, default=0.25)
    ap.add_argument("--vision-augment", default="dihedral", choices=["dihedral", "affine"],
                    help="vision phase: one flip / quarter turn per batch (GPU runs 1-2), or a random angle, "
                         "scale, shift and flip per picture (common.random_affine)")
    ap.add_argument("--vision-fraction", type=float, default=0.5, help="share of --max-seconds for the vision phase")
    ap.add_argument("--token-labels", type=float, default=0.0,
                    help="vision phase: weight of the token-labelling losses (every patch's silhouette and "
                         "category, from DATA/masks.npy: render.py --masks); 0 = off (GPU runs 1-2, CPU runs 1-2)")
    ap.add_argument("--vision-only", action="store_true",
                    help="stop after the vision phase (the saved folder's text side is --init's, untouched): for "
                         "comparing vision-phase choices with vision_probe.py, or continuing with --init")
    ap.add_argument("--vision-layers", type=int, default=0,
                    help="with --init: deepen its vision tower to this many layers, each new one starting as the "
                         "identity (grow_vision); 0 = as the folder has it")
    ap.add_argument("--init", help="continue from this CLIPModel folder (both phases run again from its weights; "
                    "the classifier heads start afresh)")
    ap.add_argument("--checkpoint-every", type=int, default=500)
    common.add_device_args(ap)
    args, device, labels, images = common.start_run(ap)
    images = images.to(device)
    targets = {k: torch.tensor([v.index(l[k]) for l in labels], device=device) for k, v in HEADS.items()}
    model = CLIPModel.from_pretrained(args.init).float() if args.init else CLIPModel(config())
    if args.vision_layers:
        model = grow_vision(model, args.vision_layers)
    model = model.to(device)
    log = common.Log(os.path.join(args.work, "log.jsonl"))
    # Each phase has its own budget: --vision-fraction of --max-seconds for the first, the rest for the second.
    total = args.max_seconds
    args.max_seconds = total * args.vision_fraction
    masks = common.load_masks(args.data, len(labels)).to(device) if args.token_labels else None
    vsteps, vwsd = train_vision(args, model, images, targets, device, log, masks)
    del masks
    args.max_seconds = total * (1 - args.vision_fraction)
    tsteps, tdecay = 0, 0
    if not args.vision_only:
        pooled = image_features(model, images, device)
        del images
        tsteps, twsd = train_text(args, model, labels, pooled, device, log)
        tdecay = twsd.decay_start
    print(f"done: vision {vsteps} steps (decay from {vwsd.decay_start}), text {tsteps} steps "
          f"(decay from {tdecay}); reproduce with --vision-steps {vsteps} --vision-decay-start "
          f"{vwsd.decay_start} --text-steps {tsteps} --text-decay-start {tdecay}")
    common.write_json(os.path.join(args.work, "phases.json"), {
        "vision_steps": vsteps, "vision_decay_start": vwsd.decay_start,
        "text_steps": tsteps, "text_decay_start": tdecay})

    model = model.cpu()

    def save(d):
        model.save_pretrained(d, safe_serialization=True)
        common.write_json(os.path.join(d, "preprocessor_config.json"), preprocessor_config())
        shutil.copy(common.TOKENIZER, os.path.join(d, "tokenizer.json"))
    common.replace_dir(args.out, save)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
