#!/usr/bin/env python3
"""Stage 2 of the default model: a small AutoencoderTiny (TAESD layout), 128x128 pictures <-> 32x32x4 latents.

    python3 tools/shapes/train_ae.py --data DATA/train --work WORK/ae --out models/autoencoder --steps N

Three levels of 32 channels (a factor of 4, not SD's 8: at 128x128 the stripes, dots and checkers are only
a few pixels wide, and 16x16 latents could not hold them). Trained on random 64x64 crops (a quarter of the cost of whole pictures). Loss: L1 + MSE on [-1, 1] pixels, plus a small
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
import shutil
import sys

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def make_model():
    return AutoencoderTiny(
        in_channels=3, out_channels=3, latent_channels=4, act_fn="relu",
        encoder_block_out_channels=(32, 32, 32), decoder_block_out_channels=(32, 32, 32),
        num_encoder_blocks=(1, 2, 3), num_decoder_blocks=(3, 2, 1),
        upsampling_scaling_factor=2, latent_magnitude=3, latent_shift=0.5, scaling_factor=1.0,
        force_upcast=False)


def to_unit(images_u8):
    return images_u8.float() / 127.5 - 1.0


def latent_stats(model, images, n=2048):
    """The encoder's latents of the first n training pictures (unscaled) and the whole-picture
    reconstruction MSE on [-1, 1] pixels."""
    model.eval()
    zs, se = [], 0.0
    with torch.no_grad():
        for i in range(0, min(len(images), n), 64):
            x = to_unit(images[i:i + 64])
            z = model.encoder(x)
            se += F.mse_loss(model.decoder(z), x, reduction="sum").item()
            zs.append(z)
    model.train()
    zs = torch.cat(zs)
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
    ap.add_argument("--checkpoint-every", type=int, default=100)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    os.makedirs(args.work, exist_ok=True)

    labels = common.read_labels(args.data)
    images = common.load_images(args.data, labels)
    model = make_model()
    if args.init:
        model.load_state_dict(AutoencoderTiny.from_pretrained(args.init).float().state_dict())
        with torch.no_grad():
            zs, mse = latent_stats(model, images)
            mean = zs.mean(dim=(0, 2, 3))
            model.encoder.layers[-1].bias -= mean
            # The decoder's first conv reads tanh(z/3)*3, nearly z for these small latents: adding W·mu to
            # its bias (exact away from the zero-padded border) lets it read centred latents as before.
            first = model.decoder.layers[0]
            first.bias += torch.einsum("oikl,i->o", first.weight, mean)
        print(f"--init {args.init}: reconstruction MSE {mse:.5f}; encoder latents shifted by "
              f"{[round(v, 4) for v in mean.tolist()]} (unscaled; latent std {zs.std().item():.4f})")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    ckpt_path = os.path.join(args.work, "checkpoint.pt")
    checkpoint = common.Checkpoint(ckpt_path, model=model, opt=opt, sched=sched)
    start = checkpoint.resume()
    log = common.Log(os.path.join(args.work, "log.jsonl"))

    model.train()
    for step in range(start, args.steps):
        x = to_unit(images[common.batch_indices(args.seed, step, len(labels), args.batch)])
        if args.crop < x.shape[-1]:
            # Fully convolutional: random crops (on the latent grid) teach the same maps at a fraction of the cost.
            g = common.step_generator(args.seed, step, 2)
            oy, ox = (torch.randint(0, (x.shape[-1] - args.crop) // 4 + 1, (2,), generator=g) * 4).tolist()
            x = x[:, :, oy:oy + args.crop, ox:ox + args.crop]
        z = model.encoder(x)
        y = model.decoder(z)
        rec_l1 = (y - x).abs().mean()
        rec_l2 = F.mse_loss(y, x)
        reg = z.pow(2).mean()
        mean_sq = z.mean(dim=(0, 2, 3)).pow(2).sum()
        loss = rec_l1 + rec_l2 + args.latent_penalty * reg + args.mean_penalty * mean_sq
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 25 == 0 or step == start:
            log(step + 1, args.steps, l1=rec_l1.item(), mse=rec_l2.item(), latent_rms=reg.sqrt().item(),
                latent_mean_sq=mean_sq.item(), lr=sched.get_last_lr()[0])
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            checkpoint.save(step + 1)

    model.eval()
    with torch.no_grad():
        zs, mse = latent_stats(model, images)
    std = zs.std().item()
    model.register_to_config(scaling_factor=round(1.0 / std, 6))
    print(f"latent mean {zs.mean().item():.4f} std {std:.4f} -> scaling_factor {1.0 / std:.6f}; per-channel means "
          f"(scaled) {[round(v / std, 3) for v in zs.mean(dim=(0, 2, 3)).tolist()]}; reconstruction MSE {mse:.5f}")
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
