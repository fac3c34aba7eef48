#!/usr/bin/env python3
"""Stage 2 of the default model: a small AutoencoderTiny (TAESD layout), 128x128 pictures <-> latents.

    python3 tools/shapes/train_ae.py --data DATA/train --work WORK/ae --out models/autoencoder --steps N \
        [--levels 4 --width 48 --latent-channels 8] [--device cuda]

--levels L gives a factor of 2^(L-1): the second design uses 4 levels (factor 8, SD's, 16x16 latents at
128x128, a quarter of the UNet's cost per sample of the first design's 32x32) with more latent channels
than SD's 4 to hold the stripes, dots and checkers that are only a few pixels wide (tools/shapes/ae_gate.py
says whether the judge still reads every style off the reconstructions). AutoencoderTiny needs one width
for every level. --crop trains on random crops (0: whole pictures). Loss: L1 + MSE on [-1, 1] pixels, plus a small
penalty on the latents so that their scale stays inside the decoder's tanh clamp. At the end the latents'
standard deviation over the training pictures is measured and written as `scaling_factor` (1/std), so that
the UNet sees unit-variance latents as SD's does. Resumable as the other stages.

Centred latents (`--mean-penalty`, and `--init` to start from a trained autoencoder): the first model's
latents had per-channel means of up to 1.8 standard deviations. With SD's betas the last training step keeps
sqrt(alpha_bar) = 0.068 of the signal, so the model learns that x_T carries that offset, and sampling from
zero-mean noise then starts every picture in the wrong place (docs/default-model.md). The penalty is on
the squared per-channel mean of the batch's latents; `--init` also shifts the encoder's last bias by the
measured means before the first step and the decoder's first bias by the same means through its first
convolution, so a fine-tune starts centred and close to the trained autoencoder.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def make_model(levels=3, width=32, latent_channels=4):
    """levels=3, width=32, latent_channels=4 is the first design's (factor 4); blocks per level grow
    towards the latents in the encoder and shrink towards the pixels in the decoder, as in TAESD."""
    enc = tuple([1] + [min(i + 1, 3) for i in range(1, levels)])
    return AutoencoderTiny(
        in_channels=3, out_channels=3, latent_channels=latent_channels, act_fn="relu",
        encoder_block_out_channels=(width,) * levels, decoder_block_out_channels=(width,) * levels,
        num_encoder_blocks=enc, num_decoder_blocks=enc[::-1],
        upsampling_scaling_factor=2, latent_magnitude=3, latent_shift=0.5, scaling_factor=1.0,
        force_upcast=False)


def to_unit(images_u8):
    return images_u8.float() / 127.5 - 1.0


def latent_stats(model, images, n=2048):
    """The encoder's latents of the first n training pictures (unscaled) and the whole-picture
    reconstruction MSE on [-1, 1] pixels."""
    model.eval()
    zs, se = [], 0.0
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, min(len(images), n), 64):
            x = to_unit(images[i:i + 64].to(device))
            z = model.encoder(x)
            se += F.mse_loss(model.decoder(z), x, reduction="sum").item()
            zs.append(z)
    model.train()
    zs = torch.cat(zs).cpu()
    return zs, se / (len(zs) * 3 * images.shape[-1] * images.shape[-2])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--crop", type=int, default=64, help="train on random crops of this side")
    ap.add_argument("--latent-penalty", type=float, default=1e-3)
    ap.add_argument("--mean-penalty", type=float, default=0.0, help="weight of the per-channel latent mean penalty")
    ap.add_argument("--init", help="start from this AutoencoderTiny folder (its latents re-centred)")
    ap.add_argument("--levels", type=int, default=3, help="levels of the encoder and decoder (factor 2^(levels-1))")
    ap.add_argument("--width", type=int, default=32, help="channels of every level")
    ap.add_argument("--latent-channels", type=int, default=4)
    ap.add_argument("--schedule", default="onecycle", choices=["onecycle", "wsd"],
                    help="learning rate: one-cycle over --steps (the first design's), or warm-up, constant and a "
                         "cosine decay (common.WsdSchedule; with --max-seconds it decays in time)")
    ap.add_argument("--decay-start", type=int, help="with --schedule wsd: the step where the decay starts")
    ap.add_argument("--augment", action="store_true", help="a random flip / quarter turn of each batch")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    common.add_device_args(ap)
    args, device, labels, images = common.start_run(ap)
    images = images.to(device)
    model = make_model(args.levels, args.width, args.latent_channels).to(device)
    if args.init:
        model.load_state_dict(AutoencoderTiny.from_pretrained(args.init).float().to(device).state_dict())
        with torch.no_grad():
            zs, mse = latent_stats(model, images)
            mean = zs.mean(dim=(0, 2, 3)).to(device)
            model.encoder.layers[-1].bias -= mean
            # The decoder's first conv reads tanh(z/3)*3, nearly z for these small latents: adding W·mu to
            # its bias (exact away from the zero-padded border) lets it read centred latents as before.
            first = model.decoder.layers[0]
            first.bias += torch.einsum("oikl,i->o", first.weight, mean)
        print(f"--init {args.init}: reconstruction MSE {mse:.5f}; encoder latents shifted by "
              f"{[round(v, 4) for v in mean.tolist()]} (unscaled; latent std {zs.std().item():.4f})")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    if args.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    else:
        sched = common.WsdSchedule(args.steps, max(1, args.steps // 20), args.decay_start, decay_fraction=0.7,
                                   floor=0.02, budget_s=args.max_seconds)
    ckpt_path = os.path.join(args.work, "checkpoint.pt")
    checkpoint = common.Checkpoint(ckpt_path, model=model, opt=opt, sched=sched)
    start = checkpoint.resume()
    log = common.Log(os.path.join(args.work, "log.jsonl"))

    deadline, t0 = common.Deadline(args.max_seconds), time.time()
    model.train()
    step = start
    while step < (args.steps if args.schedule == "onecycle" else sched.steps):
        if args.schedule == "onecycle" and deadline.expired():
            print(f"stopped by --max-seconds after step {step} of {args.steps}")
            break
        if args.schedule == "wsd":
            sched.set_lr(opt, args.lr, step)
        x = to_unit(images[common.batch_indices(args.seed, step, len(labels), args.batch).to(device)])
        if args.augment:
            x = common.dihedral(x, int(torch.randint(8, (1,), generator=common.step_generator(args.seed, step, 3))))
        if args.crop and args.crop < x.shape[-1]:
            # Fully convolutional: random crops (on the latent grid) teach the same maps at a fraction of the cost.
            g = common.step_generator(args.seed, step, 2)
            oy, ox = (torch.randint(0, (x.shape[-1] - args.crop) // 4 + 1, (2,), generator=g) * 4).tolist()
            x = x[:, :, oy:oy + args.crop, ox:ox + args.crop]
        with common.autocast(device):
            z = model.encoder(x)
            y = model.decoder(z)
        y, z = y.float(), z.float()
        rec_l1 = (y - x).abs().mean()
        rec_l2 = F.mse_loss(y, x)
        reg = z.pow(2).mean()
        mean_sq = z.mean(dim=(0, 2, 3)).pow(2).sum()
        loss = rec_l1 + rec_l2 + args.latent_penalty * reg + args.mean_penalty * mean_sq
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if args.schedule == "onecycle":
            sched.step()
        step += 1
        if step % 25 == 0 or step == start + 1:
            log(step, args.steps, l1=rec_l1.item(), mse=rec_l2.item(), latent_rms=reg.sqrt().item(),
                latent_mean_sq=mean_sq.item(), lr=opt.param_groups[0]["lr"])
        if step % args.checkpoint_every == 0:
            checkpoint.save(step)
    checkpoint.save(step)
    print(f"trained {step} steps" + (f", decay from {sched.decay_start}; reproduce with --steps {step} "
                                     f"--decay-start {sched.decay_start}" if args.schedule == "wsd" else ""))
    common.write_json(os.path.join(args.work, "done.json"), {
        "steps": step, "decay_start": getattr(sched, "decay_start", None), "seconds": round(time.time() - t0, 1)})

    model.eval()
    with torch.no_grad():
        zs, mse = latent_stats(model, images)
    model.cpu()
    std = zs.std().item()
    model.register_to_config(scaling_factor=round(1.0 / std, 6))
    print(f"latent mean {zs.mean().item():.4f} std {std:.4f} -> scaling_factor {1.0 / std:.6f}; per-channel means "
          f"(scaled) {[round(v / std, 3) for v in zs.mean(dim=(0, 2, 3)).tolist()]}; reconstruction MSE {mse:.5f}")
    common.replace_dir(args.out, lambda d: model.save_pretrained(d, safe_serialization=True))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
