#!/usr/bin/env python3
"""What Control-CLIP's encoders change in the contexts the frozen UNet reads (issue 27's analysis).

    python3 tools/shapes/control_contexts.py --base tools/shapes/model/pipeline/text_encoder \\
        --encoders RUN [RUN ...] [--tokenizer tools/shapes/model/clip/tokenizer.json]

RUN is a `control-clip finetune --out` folder (category_encoder/, style_encoder/: PEFT LoRA or full
CLIPTextModel folders; adapter/). For each run, with c_b = E(t), c_c = f_c(t), c_s = A(f_s(t)) (77 × D),
and RMS taken over channels, averaged over prompts:

- drift: RMS(c − c_b) on plain prompts ("a red star"), at positions 0..=eos and after eos (the padding
  positions, which L_keep does not hold but the UNet attends to), for c_c and c_s, against RMS(c_b);
- style: for style-name prompts t_n = "a red star in striped style" and the descriptive prompt t_d = "a red
  star with stripes" that the base model can draw, the distance of c_s(t_n) from E(t_d) beside the distance
  of E(t_n) from E(t_d) (E(t_d) is what the UNet was trained to draw stripes from; a style encoder that
  learned the name should move toward it), at the same position groups.
It measures only the text side; the judge on generated pictures (control_eval.py) is the truth.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import CLIPTextModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from control_eval import SUBSET  # noqa: E402
from domain import descriptive_prompt, plain_prompt, style_name_prompt  # noqa: E402

sys.path.insert(0, os.path.join(common.REPO, "tests", "fixtures"))
from fixtures_control import Adapter as ReferenceAdapter  # noqa: E402  the PyTorch reference of src/control/adapter.rs


def encoder(base_dir, folder):
    """f: E with the folder's LoRA deltas merged, or the folder's full CLIPTextModel."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return CLIPTextModel.from_pretrained(folder).float().eval()
    # Merged by hand, W' = W + (alpha / r) B A, as src/control/ does: PEFT matches module paths by name, and
    # transformers 5's CLIPTextModel no longer has the `text_model.` level that the saved keys carry.
    model = CLIPTextModel.from_pretrained(base_dir).float()
    cfg = json.load(open(os.path.join(folder, "adapter_config.json")))
    scale = cfg["lora_alpha"] / (cfg["r"] ** 0.5 if cfg.get("use_rslora") else cfg["r"])
    deltas = load_file(os.path.join(folder, "adapter_model.safetensors"))
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, a in deltas.items():
            if not key.endswith(".lora_A.weight"):
                continue
            path = key[: -len(".lora_A.weight")].split("encoder.layers.", 1)[1]
            [name] = [n for n in modules if n.endswith("encoder.layers." + path)]
            b = deltas[key.replace("lora_A", "lora_B")]
            modules[name].weight += scale * (b.float() @ a.float())
    return model.eval()


def load_adapter(folder):
    """A from a `control-clip finetune` adapter folder (config.json + model.safetensors)."""
    cfg = json.load(open(os.path.join(folder, "config.json")))
    adapter = ReferenceAdapter(cfg["hidden_size"], cfg["adapter_dim"], eps=cfg.get("layer_norm_eps", 1e-5))
    adapter.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    return adapter.eval()


def tokenize(tok, prompts):
    ids, eos = [], []
    for p in prompts:
        t = tok.encode(p).ids[:77]
        eos.append(len(t) - 1)
        ids.append(t + [t[-1]] * (77 - len(t)))  # CLIP pads with the end-of-text token
    return torch.tensor(ids), eos


@torch.no_grad()
def hidden(model, ids):
    return model(input_ids=ids).last_hidden_state


def rms_by_group(a, b, eos):
    """Mean over prompts of the channel-RMS of a − b, at positions 0..=eos and after eos."""
    d = ((a - b) ** 2).mean(-1).sqrt()  # [N, 77]
    pre = torch.stack([d[i, : e + 1].mean() for i, e in enumerate(eos)]).mean()
    post = torch.stack([d[i, e + 1:].mean() for i, e in enumerate(eos)]).mean()
    return float(pre), float(post)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="E: a CLIPTextModel folder")
    ap.add_argument("--encoders", nargs="+", required=True)
    ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "model", "clip", "tokenizer.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = Tokenizer.from_file(args.tokenizer)
    base = CLIPTextModel.from_pretrained(args.base).float().eval()
    triples = SUBSET
    plain_ids, plain_eos = tokenize(tok, [plain_prompt(k, c) for k, c, _ in triples])
    name_ids, name_eos = tokenize(tok, [style_name_prompt(*t) for t in triples])
    desc_ids, desc_eos = tokenize(tok, [descriptive_prompt(*t) for t in triples])
    e_plain, e_name, e_desc = hidden(base, plain_ids), hidden(base, name_ids), hidden(base, desc_ids)
    zero = torch.zeros_like(e_plain)
    scale = rms_by_group(e_plain, zero, plain_eos)
    # The two prompts differ in length, so positions are compared from the end-of-text token on (after eos),
    # and before it as the mean context of the prompt's tokens.
    def style_gap(c_name):
        pre = float(((c_name.mean(1) - e_desc.mean(1)) ** 2).mean(-1).sqrt().mean())
        post = float(torch.stack([((c_name[i, name_eos[i]:name_eos[i] + 40] - e_desc[i, desc_eos[i]:desc_eos[i] + 40]) ** 2)
                                  .mean(-1).sqrt().mean() for i in range(len(triples))]).mean())
        return pre, post
    print(f"E: RMS of E(plain) {scale[0]:.3f} (0..=eos), {scale[1]:.3f} (after eos)")
    print(f"E(style name) vs E(descriptive): mean over tokens {style_gap(e_name)[0]:.3f}, "
          f"from eos on {style_gap(e_name)[1]:.3f}")
    for run in args.encoders:
        f_c = encoder(args.base, os.path.join(run, "category_encoder"))
        f_s = encoder(args.base, os.path.join(run, "style_encoder"))
        a_dir = os.path.join(run, "adapter")
        adapter = load_adapter(a_dir) if os.path.isdir(a_dir) else torch.nn.Identity()
        with torch.no_grad():
            c_c_plain = hidden(f_c, plain_ids)
            c_s_plain = adapter(hidden(f_s, plain_ids))
            c_s_name = adapter(hidden(f_s, name_ids))
            c_c_name = hidden(f_c, name_ids)
        dc, ds = rms_by_group(c_c_plain, e_plain, plain_eos), rms_by_group(c_s_plain, e_plain, plain_eos)
        g_s, g_c = style_gap(c_s_name), style_gap(c_c_name)
        print(f"{run}:\n  drift on plain prompts (RMS): f_c {dc[0]:.3f} / {dc[1]:.3f}, A∘f_s {ds[0]:.3f} / {ds[1]:.3f} "
              f"(0..=eos / after eos)\n  style name vs E(descriptive): A∘f_s {g_s[0]:.3f} / {g_s[1]:.3f}, "
              f"f_c {g_c[0]:.3f} / {g_c[1]:.3f} (mean over tokens / from eos on)")


if __name__ == "__main__":
    main()
