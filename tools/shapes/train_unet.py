#!/usr/bin/env python3
"""Stage 3 of the default model: a UNet2DConditionModel on the autoencoder's latents, conditioned on E.

    python3 tools/shapes/train_unet.py --data DATA/train --clip models/clip --autoencoder models/autoencoder \
        --work WORK/unet --out models --steps N

E is the CLIP model's text tower exactly as stage 1 left it, frozen, as SD's CLIP is; the UNet reads its
last hidden state over all 77 positions (what the pipeline hands it). Captions are drawn afresh each step
from the labels (a quarter describe the style in plain words); 10 % are empty, for classifier-free
guidance. DDPM training (epsilon prediction, SD's scaled-linear betas; optionally Min-SNR-weighted),
AdamW with a warm-up and a cosine decay, an EMA of the weights; the
EMA is what is saved. Writes OUT/unet, OUT/text_encoder (E as a CLIPTextModel folder) and
OUT/scheduler/scheduler_config.json. Resumable as the other stages; every checkpoint also keeps the EMA.
"""
import argparse
import copy
import math
import os
import random
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from domain import base_caption  # noqa: E402


def make_unet(cross_dim):
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 96, 96),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=4, norm_num_groups=32)


def make_scheduler():
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False, steps_offset=1)


def encode_latents(folder, labels, images, ae_dir):
    """Latents of every training picture, scaled by the autoencoder's scaling_factor; cached in the folder."""
    path = os.path.join(folder, "latents.npy")
    ae = AutoencoderTiny.from_pretrained(ae_dir).eval()
    key = f"{os.path.abspath(ae_dir)} {ae.config.scaling_factor}"
    if os.path.exists(path) and open(path + ".key").read() == key:
        return torch.from_numpy(np.load(path))
    with torch.no_grad():
        zs = [ae.encoder(images[i:i + 64].float() / 127.5 - 1.0) * ae.config.scaling_factor
              for i in range(0, len(images), 64)]
    z = torch.cat(zs).numpy()
    np.save(path + ".tmp.npy", z)
    os.replace(path + ".tmp.npy", path)
    open(path + ".key", "w").write(key)
    return torch.from_numpy(z)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--autoencoder", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--describe-fraction", type=float, default=0.25)
    ap.add_argument("--empty-fraction", type=float, default=0.1)
    ap.add_argument("--checkpoint-every", type=int, default=200)
    ap.add_argument("--min-snr-gamma", type=float, default=0.0,
                    help="weight each sample's loss by min(SNR, gamma) / SNR (Min-SNR, Hang et al. 2023); 0: plain MSE")
    ap.add_argument("--init", help="start from this UNet2DConditionModel folder, or from the EMA in another run's "
                    "checkpoint.pt, instead of at random")
    ap.add_argument("--stop-after", type=int, default=0, help="stop (with a checkpoint) after this many steps of this run")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    os.makedirs(args.work, exist_ok=True)

    labels = common.read_labels(args.data)
    images = common.load_images(args.data, labels)
    latents = encode_latents(args.data, labels, images, args.autoencoder)
    del images
    # f32 whatever the folder's dtype (the committed folders are f16; every consumer widens to f32 on load).
    text_encoder = CLIPTextModel.from_pretrained(args.clip).float().eval().requires_grad_(False)
    tok = common.ClipTokenizer()
    unet = make_unet(text_encoder.config.hidden_size)
    if args.init and args.init.endswith(".pt"):
        unet.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=False)["ema"])
    elif args.init:
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(args.init).float().state_dict())
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise_sched = make_scheduler()
    alphas = noise_sched.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    # Linear warm-up, then a cosine decay to a tenth of the peak at the last step.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    ckpt_path = os.path.join(args.work, "checkpoint.pt")
    checkpoint = common.Checkpoint(ckpt_path, model=unet, ema=ema, opt=opt, sched=sched)
    start = checkpoint.resume()
    print(f"unet parameters: {sum(p.numel() for p in unet.parameters()):,}")
    log = common.Log(os.path.join(args.work, "log.jsonl"))

    unet.train()
    end = args.steps if not args.stop_after else min(args.steps, start + args.stop_after)
    for step in range(start, end):
        idx = common.batch_indices(args.seed, step, len(labels), args.batch)
        crng = random.Random(args.seed * 1_000_003 + step)
        captions = []
        for i in idx.tolist():
            l = labels[i]
            if crng.random() < args.empty_fraction:
                captions.append("")
            else:
                captions.append(base_caption(crng, l["category"], l["color"], l["style"],
                                             crng.random() < args.describe_fraction))
        with torch.no_grad():
            context = text_encoder(input_ids=tok(captions)).last_hidden_state
        x0 = latents[idx]
        g = common.step_generator(args.seed, step, 1)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=context).sample
        if args.min_snr_gamma:
            # Min-SNR weighting: low-noise steps (high SNR), where the epsilon loss is easy and only fine
            # texture is at stake, count less; the high-noise steps that decide the shape count fully.
            snr = (a / (1 - a)).view(-1)
            weight = snr.clamp(max=args.min_snr_gamma) / snr
            loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        else:
            loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
        if (step + 1) % 25 == 0 or step == start:
            log(step + 1, args.steps, loss=loss.item(), grad_norm=gn.item(), lr=sched.get_last_lr()[0])
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == end:
            checkpoint.save(step + 1)
    if end < args.steps:
        print(f"stopped at step {end} of {args.steps}; rerun the same command to continue")
        return

    os.makedirs(args.out, exist_ok=True)
    for name, save in [("unet", lambda d: ema.save_pretrained(d, safe_serialization=True)),
                       ("text_encoder", lambda d: text_encoder.save_pretrained(d, safe_serialization=True)),
                       ("scheduler", lambda d: noise_sched.save_pretrained(d))]:
        target = os.path.join(args.out, name)
        tmp = target + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    print(f"saved unet, text_encoder and scheduler in {args.out}")


if __name__ == "__main__":
    main()
