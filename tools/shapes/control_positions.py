#!/usr/bin/env python3
"""Which context positions carry the style for the frozen UNet (issue 27's analysis).

    python3 tools/shapes/control_positions.py --pipeline tools/shapes/model/pipeline \\
        --judge tools/shapes/model/judge --work WORK [--seed 900]

For every triple of control_eval.SUBSET, with t_d the descriptive prompt ("a red star with stripes") and
t_n the style-name prompt ("a red star in striped style"), diffusers' pipeline draws from four contexts
(77 × D each; the negative branch is E("") as always), and the judge reads the pictures:

- desc: E(t_d), the frozen UNet's ceiling (row b);
- name: E(t_n) (row a);
- name+desc-tail: E(t_n) at its positions 0..eos-1, then E(t_d) from its end-of-text token on;
- desc+name-tail: E(t_d) at its positions 0..eos-1, then E(t_n) from its end-of-text token on.

If the style follows the tail, a style encoder must change the end-of-text and padding positions (which
the CLIP-space losses only reach at eos); if it follows the tokens, the word positions.
"""
import argparse
import json
import os
import sys

import torch
from diffusers import StableDiffusionPipeline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evaluate  # noqa: E402
from control_eval import SUBSET  # noqa: E402
from domain import descriptive_prompt, style_name_prompt  # noqa: E402


def encode(pipe, prompt):
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    eos = int((ids[0] == pipe.tokenizer.eos_token_id).nonzero()[0])
    with torch.no_grad():
        return pipe.text_encoder(ids).last_hidden_state, eos


def splice(head, head_eos, tail, tail_eos):
    """head's positions 0..eos-1, then tail's from its eos on (its last position repeated to fill 77)."""
    rest = tail[:, tail_eos:]
    need = 77 - head_eos
    rest = torch.cat([rest, rest[:, -1:].expand(1, max(0, need - rest.shape[1]), -1)], 1)[:, :need]
    return torch.cat([head[:, :head_eos], rest], 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seed", type=int, default=900)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--guidance", type=float, default=4.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    os.makedirs(args.work, exist_ok=True)
    negative, _ = encode(pipe, "")
    labels = []
    for i, (k, c, s) in enumerate(SUBSET):
        d, d_eos = encode(pipe, descriptive_prompt(k, c, s))
        n, n_eos = encode(pipe, style_name_prompt(k, c, s))
        contexts = {"desc": d, "name": n, "name+desc-tail": splice(n, n_eos, d, d_eos),
                    "desc+name-tail": splice(d, d_eos, n, n_eos)}
        for kind, context in contexts.items():
            file = f"{i:03d}-{kind}.png"
            g = torch.Generator().manual_seed(args.seed)
            image = pipe(prompt_embeds=context, negative_prompt_embeds=negative, num_inference_steps=args.steps,
                         guidance_scale=args.guidance, height=128, width=128, generator=g).images[0]
            image.save(os.path.join(args.work, file))
            labels.append(dict(file=file, kind=kind, category=k, color=c, style=s))
    with open(os.path.join(args.work, "labels.jsonl"), "w") as f:
        for r in labels:
            f.write(json.dumps(r) + "\n")
    judged = evaluate.judge_folder(args.judge, args.work, quiet=True)
    print("| context | pictures | style | category | colour |\n|---|---|---|---|---|")
    for kind in contexts:
        acc = {h: evaluate.accuracy(judged, kind, h) for h in ("style", "category", "color")}
        print(f"| {kind} | {len(SUBSET)} | {100 * acc['style']:.1f} % | {100 * acc['category']:.1f} % | "
              f"{100 * acc['color']:.1f} % |")


if __name__ == "__main__":
    main()
