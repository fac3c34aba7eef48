#!/usr/bin/env python3
"""The browser UNet benchmark's inputs: for each model a seeded diffusers UNet, the same UNet exported to ONNX
(for onnxruntime-web, the peer runtime), the inputs of one guided step and PyTorch's output on them.

    pip install torch diffusers safetensors onnx onnxscript
    python3 tests/bench/export_peer.py [--models tiny,sd15-narrow,default]

Writes ~/.cache/control-clip/bench/peer-MODEL/ with `unet/` (config.json + diffusion_pytorch_model.safetensors,
what our wasm loads), `unet.onnx` (what onnxruntime-web loads: the same weights, embedded) and `io.safetensors`
(`sample`, `timestep`, `encoder_hidden_states` and PyTorch's `out`). Batch 2: one step of a generation with
classifier-free guidance runs the UNet on the conditional and unconditional rows together. Then
`node tests/browser/bench_peer.mjs` times both runtimes on them. Not run by CI.
"""
import argparse
import os

import torch
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.path.expanduser("~/.cache/control-clip/bench")

# SD 1.5's UNet structure (4 levels, 2 resnets a level, cross-attention on the first three, 8 heads, CLIP ViT-L
# context) at a browser's size: channels 64–256, 32×32 latents (a 256² picture).
SD15_NARROW = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                   block_out_channels=(64, 128, 256, 256), cross_attention_dim=768, attention_head_dim=8,
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
MODELS = {
    # The parity fixtures' tiny UNet (committed).
    "tiny": os.path.join(ROOT, "tests/fixtures/unet/sd-tiny"),
    "sd15-narrow": SD15_NARROW,
    # The shipped default model's UNet (tools/shapes: the trained shapes model).
    "default": os.path.join(ROOT, "tools/shapes/model/pipeline/unet"),
}


class Step(torch.nn.Module):
    """The UNet as one function of three tensors, returning the noise prediction (what ONNX exports)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


def export(name):
    from diffusers import UNet2DConditionModel

    spec = MODELS[name]
    folder = os.path.join(CACHE, "peer-" + name)
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    unet = (UNet2DConditionModel.from_pretrained(spec) if isinstance(spec, str) else UNet2DConditionModel(**spec)).eval()
    unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    c = unet.config
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g)
    context = torch.randn(2, 77, c.cross_attention_dim, generator=g)
    timestep = torch.tensor([500, 500], dtype=torch.int64)
    step = Step(unet).eval()
    with torch.no_grad():
        out = step(sample, timestep, context)
    save_file({"sample": sample, "timestep": timestep, "encoder_hidden_states": context, "out": out.contiguous()},
              os.path.join(folder, "io.safetensors"))
    onnx_path = os.path.join(folder, "unet.onnx")
    torch.onnx.export(step, (sample, timestep, context), onnx_path, input_names=["sample", "timestep", "encoder_hidden_states"],
                      output_names=["out"], opset_version=18, dynamo=True, external_data=False)
    check_onnx(onnx_path, sample, timestep, context, out)
    print("%s: %s (%d parameters, latents %d², context %d)" % (name, folder, sum(p.numel() for p in unet.parameters()),
                                                             c.sample_size, c.cross_attention_dim), flush=True)


def check_onnx(path, sample, timestep, context, out):
    """The exported graph must compute what PyTorch did (onnxruntime's CPU runtime when installed, else skipped:
    the browser benchmark compares onnxruntime-web's output with `out` again)."""
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"sample": sample.numpy(), "timestep": timestep.numpy(), "encoder_hidden_states": context.numpy()})[0]
    err = float(abs(torch.from_numpy(got) - out).max())
    if err > 1e-3 * max(1.0, float(out.abs().max())):
        raise SystemExit("%s: onnxruntime differs from PyTorch by %g" % (path, err))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    for name in ap.parse_args().models.split(","):
        export(name)


if __name__ == "__main__":
    main()
