#!/usr/bin/env python3
"""Stage 3 of the default model: a UNet2DConditionModel on the autoencoder's latents, conditioned on E.

    python3 tools/shapes/train_unet.py --data DATA/train --clip models/clip --autoencoder models/autoencoder \
        --work WORK/unet --out models --steps N [--schedule zero-snr-v] [--device cuda]

E is the CLIP model's text tower exactly as stage 1 left it, frozen, as SD's CLIP is; the UNet reads its
last hidden state over all 77 positions (what the pipeline hands it). Captions are drawn afresh each step
from the labels (a quarter describe the style in plain words); 10 % are empty, for classifier-free
guidance. Every caption the templates can make is encoded by E once, up front (E is frozen, so this is
the same as encoding each batch).

Noise schedules (--schedule):
- zero-snr-v (the second design): SD's scaled-linear betas rescaled to zero terminal SNR, v-prediction,
  trailing timestep spacing at inference (Lin et al. 2023). The first design's schedule left
  sqrt(alpha_bar_T) = 0.068 of the picture in the "pure noise" sampling starts from, so the mean brightness
  leaked and dark (neon) pictures could not be drawn.
- sd-eps (the first design's): SD's scaled-linear betas, epsilon prediction.
Min-SNR weighting (--min-snr-gamma, Hang et al. 2023): min(SNR, γ)/SNR on the epsilon loss, min(SNR, γ)/(SNR+1)
on the v loss (the same weight on the x0 error either way).

--augment encodes the 8 flips and quarter turns of every picture (labels and distribution unchanged:
common.dihedral) and draws from all of them. AdamW, a warm-up, a constant rate and a cosine decay at the end
(common.WsdSchedule), an EMA of the weights; the EMA is what is saved. Writes OUT/unet and
OUT/scheduler/scheduler_config.json (and OUT/text_encoder with --write-text-encoder). Resumable as the
other stages; every checkpoint also keeps the EMA.
"""
import argparse
import copy
import os
import random
import sys
import time

import numpy as np
import torch
from diffusers import AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from domain import BASE_TEMPLATES, CATEGORIES, COLORS, STYLE_DESCRIPTIONS, article, base_caption  # noqa: E402


def make_unet(cross_dim, latent_channels=4, sample_size=32, block_out_channels=(64, 96, 96), layers_per_block=1,
              heads=4):
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
        layers_per_block=layers_per_block, block_out_channels=tuple(block_out_channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(block_out_channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(block_out_channels) - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_dim, attention_head_dim=heads, norm_num_groups=32)


def make_scheduler(schedule="sd-eps"):
    if schedule == "zero-snr-v":
        return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False,
                             rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=1)
    if schedule == "sd-eps":
        return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                             steps_offset=1)
    raise SystemExit(f"--schedule {schedule}: expected zero-snr-v or sd-eps")


def load_text_encoder(folder):
    """E in f32, from a CLIPTextModel folder or from the text tower of a whole CLIPModel folder (transformers
    reads the text_config and the text_model.* weights of the latter and leaves the vision tower out)."""
    from transformers.utils import logging
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the vision tower's weights are reported as unexpected: they are not needed
    te = CLIPTextModel.from_pretrained(folder).float().eval().requires_grad_(False)
    logging.set_verbosity(verbosity)
    return te


def all_captions():
    """Every caption base_caption can make, and the empty one (index 0)."""
    out = [""]
    for k in CATEGORIES:
        for c in COLORS:
            for t in BASE_TEMPLATES:
                first = c if ("{a} {c}" in t) else k
                base = t.format(a=article(first), c=c, k=k)
                out.append(base)
                out += [f"{base} {d}" for ds in STYLE_DESCRIPTIONS.values() for d in ds]
    return list(dict.fromkeys(out))


def encode_captions(text_encoder, captions, device):
    """E's last hidden state of every caption: [N, 77, D] on the device, and caption -> row."""
    tok = common.ClipTokenizer()
    rows = []
    with torch.no_grad():
        for i in range(0, len(captions), 512):
            rows.append(text_encoder(input_ids=tok(captions[i:i + 512]).to(device)).last_hidden_state)
    return torch.cat(rows), {c: i for i, c in enumerate(captions)}


def encode_latents(folder, images, ae_dir, device, augment):
    """Latents of every training picture (and of its 8 flips / turns with augment), scaled by the
    autoencoder's scaling_factor: [8 or 1, N, C, h, w]; cached in the folder."""
    import hashlib
    ae = AutoencoderTiny.from_pretrained(ae_dir).float().eval().to(device)
    key = f"{os.path.abspath(ae_dir)} {ae.config.scaling_factor} {augment}"
    # One cache file per autoencoder and view set, so that runs on different autoencoders never share one.
    path = os.path.join(folder, f"latents-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy")
    if os.path.exists(path) and os.path.exists(path + ".key") and open(path + ".key").read() == key:
        return torch.from_numpy(np.load(path))
    views = range(8) if augment else range(1)
    out = []
    with torch.no_grad():
        for k in views:
            zs = [ae.encoder(common.dihedral(images[i:i + 256].to(device).float() / 127.5 - 1.0, k))
                  * ae.config.scaling_factor for i in range(0, len(images), 256)]
            out.append(torch.cat(zs).cpu())
    z = torch.stack(out).numpy()
    np.save(path + ".tmp.npy", z)
    os.replace(path + ".tmp.npy", path)
    open(path + ".key", "w").write(key)
    return torch.from_numpy(z)


def loss_weights(snr, prediction, gamma):
    if not gamma:
        return torch.ones_like(snr)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction == "v_prediction" else clipped / snr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--clip", required=True, help="the CLIPModel folder of stage 1 (or a CLIPTextModel folder): E")
    ap.add_argument("--autoencoder", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--decay-start", type=int, help="step where the learning rate starts its cosine decay "
                    "(default: 80 %% of the steps, or where a --max-seconds budget puts it)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--describe-fraction", type=float, default=0.25)
    ap.add_argument("--empty-fraction", type=float, default=0.1)
    ap.add_argument("--checkpoint-every", type=int, default=200)
    ap.add_argument("--schedule", default="sd-eps", help="zero-snr-v or sd-eps (see above)")
    ap.add_argument("--min-snr-gamma", type=float, default=0.0, help="Min-SNR weighting with this gamma; 0: none")
    ap.add_argument("--channels", default="64,96,96", help="the UNet's block_out_channels")
    ap.add_argument("--layers-per-block", type=int, default=1)
    ap.add_argument("--heads", type=int, default=4, help="attention heads (diffusers' attention_head_dim)")
    ap.add_argument("--augment", action="store_true", help="train on the 8 flips / quarter turns of every picture")
    ap.add_argument("--write-text-encoder", action="store_true", help="also write OUT/text_encoder (E)")
    ap.add_argument("--init", help="start from this UNet2DConditionModel folder, or from the EMA in another run's "
                    "checkpoint.pt, instead of at random")
    ap.add_argument("--stop-after", type=int, default=0, help="stop (with a checkpoint) after this many steps of this run")
    common.add_device_args(ap)
    args, device, labels, images = common.start_run(ap)
    latents = encode_latents(args.data, images, args.autoencoder, device, args.augment).to(device)
    del images
    text_encoder = load_text_encoder(args.clip).to(device)
    captions = all_captions()
    contexts, row = encode_captions(text_encoder, captions, device)
    channels = [int(c) for c in args.channels.split(",")]
    unet = make_unet(text_encoder.config.hidden_size, latents.shape[2], latents.shape[-1], channels,
                     args.layers_per_block, args.heads)
    if args.init and args.init.endswith(".pt"):
        unet.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=False)["ema"])
    elif args.init:
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(args.init).float().state_dict())
    unet.to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise_sched = make_scheduler(args.schedule)
    prediction = noise_sched.config.prediction_type
    alphas = noise_sched.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    wsd = common.WsdSchedule(args.steps, args.warmup, args.decay_start, budget_s=args.max_seconds)
    ckpt_path = os.path.join(args.work, "checkpoint.pt")
    checkpoint = common.Checkpoint(ckpt_path, model=unet, ema=ema, opt=opt, wsd=wsd)
    start = checkpoint.resume()
    print(f"unet parameters: {sum(p.numel() for p in unet.parameters()):,}; latents {tuple(latents.shape)}; "
          f"{len(captions)} captions encoded")
    log = common.Log(os.path.join(args.work, "log.jsonl"))
    deadline, t0 = wsd.deadline, wsd.t0

    unet.train()
    step = start
    stop = start + args.stop_after if args.stop_after else None
    overrun = False
    while step < wsd.steps and (stop is None or step < stop):
        if deadline.left() < -0.1 * args.max_seconds:
            # The decay was sized from the speed so far; if the run slowed down, end it here and save.
            overrun = True
            print(f"over the wall-clock budget at step {step} of {wsd.steps}: saving as it is", flush=True)
            break
        wsd.set_lr(opt, args.lr, step)
        idx = common.batch_indices(args.seed, step, len(labels), args.batch)
        crng = random.Random(args.seed * 1_000_003 + step)
        rows = []
        for i in idx.tolist():
            l = labels[i]
            if crng.random() < args.empty_fraction:
                rows.append(0)
            else:
                rows.append(row[base_caption(crng, l["category"], l["color"], l["style"],
                                             crng.random() < args.describe_fraction)])
        context = contexts[torch.tensor(rows, device=device)]
        g = common.step_generator(args.seed, step, 1)
        view = torch.randint(latents.shape[0], (args.batch,), generator=g)
        x0 = latents[view.to(device), idx.to(device)]
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if prediction == "v_prediction" else noise
        with common.autocast(device):
            pred = unet(xt, t, encoder_hidden_states=context).sample
        snr = (a / (1 - a)).view(-1)
        weight = loss_weights(snr, prediction, args.min_snr_gamma)
        loss = (weight * (pred.float() - target).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1 - decay)
        step += 1
        if step % 100 == 0 or step == start + 1:
            log(step, wsd.steps, loss=loss.item(), grad_norm=gn.item(), lr=args.lr * wsd(step - 1))
        if step % args.checkpoint_every == 0 or step == wsd.steps:
            checkpoint.save(step)
    checkpoint.save(step)
    if step < wsd.steps and not overrun:
        print(f"stopped at step {step} of {wsd.steps}; rerun the same command to continue")
        return
    print(f"done: {step} steps, decay from {wsd.decay_start}; reproduce with --steps {step} "
          f"--decay-start {wsd.decay_start}", flush=True)
    common.write_json(os.path.join(args.work, "done.json"), {"steps": step, "decay_start": wsd.decay_start,
                                                             "planned_steps": wsd.steps, "overrun": overrun,
                                                             "seconds": round(time.time() - t0, 1)})

    os.makedirs(args.out, exist_ok=True)
    ema.cpu()
    saves = [("unet", lambda d: ema.save_pretrained(d, safe_serialization=True)),
             ("scheduler", lambda d: noise_sched.save_pretrained(d))]
    if args.write_text_encoder:
        saves.append(("text_encoder", lambda d: text_encoder.cpu().save_pretrained(d, safe_serialization=True)))
    for name, save in saves:
        common.replace_dir(os.path.join(args.out, name), save)
    print(f"saved {', '.join(n for n, _ in saves)} in {args.out}")


if __name__ == "__main__":
    main()
