#!/usr/bin/env python3
"""Benchmark: one Control-CLIP training step on an SD-1.x-sized text encoder, ours against the PyTorch
reference (tests/fixtures/reference_finetune.py: peft + torch.optim.AdamW) on the same inputs.

    pip install torch transformers safetensors peft
    cargo build --release --bin control-clip
    python3 tests/bench/bench_finetune.py [--runs 2] [--backends cpu]

E has CLIP ViT-L/14's text shape (12 layers, 768 wide, 12 heads, MLP 3072, 49,408 tokens; random weights,
std 0.02); LoRA r = 8 on all six kinds of linear layer of f_c and f_s, adapter width 128, all trainables
starting at std 0.02 (larger starting factors make this deep model's f32 gradients ill-conditioned: at 0.3,
PyTorch's own f32 and f64 gradients differ by up to 50 %); each encoder reads
32 prompts × 77 tokens per step (8 category and 8 style class prompts, 4 triplets, 4 general prompts) and the
step has 16 labelled pictures. PyTorch runs one reference step (written as io.safetensors with its
expectations), then --runs timed steps; `control-clip bench-finetune` checks one step against those
expectations and times --runs steps on each backend. Prints a markdown section for docs/benchmarks.md with
the median step times, their ratio and each process's peak resident memory. Not run by CI.
"""
import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/control-clip/target"))

VIT_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=2,
                  bos_token_id=0, pad_token_id=1, projection_dim=768)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--backends", default="cpu")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/control-clip/bench/finetune-vit-l"))
    ap.add_argument("--binary", default=os.path.join(TARGET, "release", "control-clip"),
                    help="the control-clip binary (default: the release build)")
    args = ap.parse_args()
    import torch
    from fixtures_finetune import make_finetune

    spec = dict(name="vit-l-text", seed=41, n=16, k_c=4, t_c=2, k_s=4, t_s=2, m=4, g=4, adapter_dim=128,
                weight_scale=0.02, init_scale=0.02, text=VIT_L_TEXT,
                train=dict(lr=1e-4, eps=1e-3, lora=dict(r=8, lora_alpha=16,
                                                          target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])))
    times = make_finetune(spec, out=args.work, timed_runs=args.runs)
    torch_ms = 1000 * statistics.median(times)
    torch_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [("PyTorch (reference, CPU)", torch_ms, torch_peak, "")]
    binary = args.binary
    for backend in args.backends.split(","):
        out = subprocess.run([binary, "bench-finetune", "--model", os.path.join(args.work, "model"), "--io",
                              os.path.join(args.work, "io.safetensors"), "--backend", backend, "--runs", str(args.runs)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            rows.append((f"ours ({backend})", float("nan"), float("nan"), out.stderr.strip().splitlines()[-1]))
            continue
        import json
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((f"ours ({backend})", r["step_ms"], r["peak_rss_mib"], "check passed" if r["check_pass"] else f"check FAILED ({r['check']})"))
    print(f"## Control-CLIP training step, ViT-L/14 text shape, LoRA r = 8 (issue 11)\n")
    print(f"`python3 tests/bench/bench_finetune.py --runs {args.runs} --backends {args.backends}` on {platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); median of {args.runs} "
          f"steps after one untimed step; 32 prompts × 77 tokens per encoder, 16 pictures; ours: "
          f"`{os.path.relpath(binary, TARGET)}` under the target folder.\n")
    print("| | step | vs PyTorch | peak RSS | |\n|---|---|---|---|---|")
    for name, ms, peak, note in rows:
        print(f"| {name} | {ms / 1000:.1f} s | {ms / torch_ms:.2f}× | {peak:.0f} MiB | {note} |")


if __name__ == "__main__":
    main()
