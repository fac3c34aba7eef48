#!/usr/bin/env python3
"""The TAESD decoder alone, ours against diffusers on PyTorch CPU, each in fresh processes, alternated.

    pip install torch diffusers safetensors
    cargo build --bin control-clip
    python3 tests/bench/bench_decoder.py [--size 512] [--rounds 5] [--runs 5] [--binary PATH]

Why beside bench.py: a decoder pass takes well under a second, and its time in one process depends on what
ran before it there (PyTorch's took 470–1,040 ms in bench.py's runs of one day on one machine). Here each
round starts two PyTorch processes (the model as diffusers loads it, NCHW; and in channels_last, with which
oneDNN runs its blocked direct convolutions and which was faster here) and one of ours (`control-clip bench`
on a folder whose UNet is the tiny fixture, so the process holds little else), in turn, each timing --runs
decodes after one warm-up; the report gives every round's medians and the ratios of the medians, and of our
slowest round to PyTorch's fastest in either layout. Same folder for both: a TAESD-shaped AutoencoderTiny (seed 0) and seeded latents, made once under
~/.cache/control-clip/bench/. Rewrites the "TAESD decoder alone" section of docs/benchmarks.md. Speed is
reported, never asserted. Not run by CI.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
from bench import CACHE, TAESD, TARGET, write_section  # noqa: E402

TINY_UNET = os.path.join(ROOT, "tests/fixtures/unet/sd-tiny")
TITLE = "## The TAESD decoder alone, fresh processes, alternated (issue 13)"


def prepare(size):
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file, save_file

    folder = os.path.join(CACHE, "decoder-%d" % size)
    if not os.path.exists(os.path.join(folder, "io.safetensors")):
        os.makedirs(os.path.join(folder, "unet"), exist_ok=True)
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            shutil.copy(os.path.join(TINY_UNET, name), os.path.join(folder, "unet", name))
        torch.manual_seed(0)
        AutoencoderTiny(**TAESD).save_pretrained(os.path.join(folder, "decoder"), safe_serialization=True)
        io = load_file(os.path.join(TINY_UNET, "io.safetensors"))
        g = torch.Generator().manual_seed(1)
        lat = size // 8
        save_file({"sample": io["sample"][:1].contiguous(), "timestep": io["timestep"][:1].contiguous(),
                   "encoder_hidden_states": io["encoder_hidden_states"][:1].contiguous(),
                   "latents": torch.randn(1, 4, lat, lat, generator=g)}, os.path.join(folder, "io.safetensors"))
    return folder


def torch_round(folder, runs, channels_last):
    """One PyTorch process's decodes: prints {"decoder_ms": median, "threads": n, "torch": version}."""
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    latents = load_file(os.path.join(folder, "io.safetensors"))["latents"]
    dec = AutoencoderTiny.from_pretrained(os.path.join(folder, "decoder")).eval()
    if channels_last:
        dec = dec.to(memory_format=torch.channels_last)
        latents = latents.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.no_grad():
        for run in range(runs + 1):
            t = time.perf_counter()
            dec.decode(latents)
            if run > 0:
                times.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"decoder_ms": statistics.median(times), "threads": torch.get_num_threads(), "torch": torch.__version__}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--binary", default=os.path.join(TARGET, "debug", "control-clip"))
    p.add_argument("--torch-round", help=argparse.SUPPRESS)
    p.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_round:
        return torch_round(args.torch_round, args.runs, args.channels_last)
    if not os.path.exists(args.binary):
        sys.exit("build the CLI first (cargo build --bin control-clip) or pass --binary")
    folder = prepare(args.size)
    ours, nchw, channels_last, info = [], [], [], {}
    for r in range(args.rounds):
        for layout, times in (([], nchw), (["--channels-last"], channels_last)):
            out = subprocess.run([sys.executable, __file__, "--torch-round", folder, "--runs", str(args.runs)] + layout,
                                 capture_output=True, text=True, check=True)
            info = json.loads(out.stdout.strip().splitlines()[-1])
            times.append(info["decoder_ms"])
        out = subprocess.run([args.binary, "bench", "--dir", folder, "--backend", "cpu", "--runs", str(args.runs)],
                             capture_output=True, text=True, check=True)
        ours.append(json.loads(out.stdout)["decoder_ms"])
        print("round %d: ours %.1f ms, PyTorch %.1f ms (NCHW), %.1f ms (channels_last)" % (r + 1, ours[-1], nchw[-1], channels_last[-1]), flush=True)
    write_report(args, ours, nchw, channels_last, info)


def write_report(args, ours, nchw, channels_last, info):
    med = statistics.median
    lines = [TITLE, "",
             "Command: `python3 tests/bench/bench_decoder.py --size %d --rounds %d --runs %d` (%s). Machine: %s, %d cores, "
             "torch %s (threads %d). One AutoencoderTiny decode of [1, 4, %d, %d] latents to a %d² image; each round two PyTorch "
             "processes (NCHW as diffusers loads the model; channels_last) and then one of ours, each the median of %d decodes "
             "after a warm-up."
             % (args.size, args.rounds, args.runs,
                "dev-profile binary" if "/debug/" in args.binary else "release binary",
                platform.platform(), os.cpu_count(), info.get("torch"), info.get("threads", 0),
                args.size // 8, args.size // 8, args.size, args.runs), "",
             "| round | ours ms | PyTorch NCHW ms | PyTorch channels_last ms | ours / NCHW | ours / channels_last |",
             "|---|---|---|---|---|---|"]
    for i, (o, a, b) in enumerate(zip(ours, nchw, channels_last)):
        lines.append("| %d | %.1f | %.1f | %.1f | %.2f | %.2f |" % (i + 1, o, a, b, o / a, o / b))
    fastest = min(nchw + channels_last)
    lines += ["", "Medians of the rounds: ours %.1f ms, PyTorch %.1f ms (NCHW) and %.1f ms (channels_last): ratios %.2f and %.2f; "
              "our slowest round / PyTorch's fastest in either layout: %.2f."
              % (med(ours), med(nchw), med(channels_last), med(ours) / med(nchw), med(ours) / med(channels_last), max(ours) / fastest)]
    write_section(TITLE, "\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
