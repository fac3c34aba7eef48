#!/usr/bin/env python3
"""Is a finetune-step io file well-conditioned enough to check an f32 implementation against?

    python3 tests/bench/finetune_conditioning.py DIR     # DIR holds model/ and io.safetensors

Recomputes the step's losses and gradients with the PyTorch reference (tests/fixtures/reference_finetune.py)
in float64 from the io file's inputs and starting trainables, and prints how far the file's float32
expectations are from them. If PyTorch's own f32 gradients are far from its f64 ones (more than the check's
1e-4 of a tensor's largest value), no f32 implementation can pass the check on that file, and the inputs,
not the implementation, need changing (docs/benchmarks.md, the training-step benchmark). Not run by CI.
"""
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
import reference_finetune as ref  # noqa: E402


def main(folder):
    from transformers import CLIPTextModelWithProjection

    io = load_file(os.path.join(folder, "io.safetensors"))
    with safe_open(os.path.join(folder, "io.safetensors"), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    base = CLIPTextModelWithProjection.from_pretrained(os.path.join(folder, "model")).double().eval()
    base.requires_grad_(False)
    f_c, f_s = ref.tuned_encoder(base, cfg), ref.tuned_encoder(base, cfg)
    adapter = ref.new_adapter(base.config.hidden_size, cfg["adapter_dim"]).double()
    named = ref.trainables(f_c, f_s, adapter)
    with torch.no_grad():
        for name, param in named:
            param.copy_(io["init." + name].double())
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in io.items()
             if k.split(".")[0] not in ("init", "grad", "after", "loss")}
    terms = ref.losses(f_c, f_s, adapter, base, base.text_projection, batch, cfg, base.config.eos_token_id)
    terms["total"].backward()
    for k, v in terms.items():
        e = io["loss." + k].double().item()
        print(f"loss.{k}: f64 {v.item():.6f}, f32 file {e:.6f}, relative difference {abs(v.item() - e) / max(abs(v.item()), 1e-30):.1e}")
    rel = sorted(((p.grad.double() - io["grad." + n].double()).abs().max() / io["grad." + n].double().abs().max()).item()
                 for n, p in named)
    print(f"gradients, f32 file vs f64, relative to each tensor's largest: median {rel[len(rel) // 2]:.1e}, worst {rel[-1]:.1e}")


if __name__ == "__main__":
    main(sys.argv[1])
