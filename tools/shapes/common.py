"""Shared pieces of the default model's training scripts: data, tokenizer, resumable loops.

Resuming is exact: batch s is drawn from a generator seeded by (seed, s), so a run resumed from the
checkpoint of step s draws the same batches as one that never stopped, and the checkpoint holds the
model, the optimiser (and the EMA where there is one) as they were after step s.
"""
import contextlib
import json
import math
import os
import time

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TOKENIZER = os.path.join(REPO, "tests", "fixtures", "tokenizer.json")
POSITIONS = 77


class ClipTokenizer:
    """Ids exactly as src/tokenizer.rs makes them: <|startoftext|> prompt <|endoftext|>, padded with
    <|endoftext|> to 77 positions, truncated to 75 prompt tokens."""

    def __init__(self, path=TOKENIZER):
        self.tok = Tokenizer.from_file(path)
        self.bos = self.tok.token_to_id("<|startoftext|>")
        self.eos = self.tok.token_to_id("<|endoftext|>")

    def __call__(self, prompts):
        out = torch.full((len(prompts), POSITIONS), self.eos, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids = self.tok.encode(p, add_special_tokens=False).ids[: POSITIONS - 2]
            row = [self.bos] + ids + [self.eos]
            out[i, : len(row)] = torch.tensor(row)
        return out


def read_labels_file(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_labels(folder):
    return read_labels_file(os.path.join(folder, "labels.jsonl"))


def load_images(folder, labels, cache=True):
    """uint8 [N, 3, 128, 128]; cached next to the folder as images.npy."""
    path = os.path.join(folder, "images.npy")
    if cache and os.path.exists(path):
        arr = np.load(path)
        if len(arr) == len(labels):
            return torch.from_numpy(arr)
    from concurrent.futures import ThreadPoolExecutor  # PNG decoding releases the GIL
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        arr = np.stack(list(pool.map(lambda l: np.asarray(Image.open(os.path.join(folder, l["file"])).convert("RGB")),
                                     labels, chunksize=256)))
    arr = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    if cache:
        np.save(path + ".tmp.npy", arr)
        os.replace(path + ".tmp.npy", path)
    return torch.from_numpy(arr)


def load_masks(folder, count):
    """uint8 [N, 128, 128] shape masks written by `render.py --masks` (same arguments as the pictures)."""
    path = os.path.join(folder, "masks.npy")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: missing; write it with render.py's command for this folder plus --masks")
    arr = np.load(path)
    if len(arr) != count:
        raise SystemExit(f"{path}: {len(arr)} masks for {count} pictures in {folder}/labels.jsonl")
    return torch.from_numpy(arr)


def accuracy_by_style(right, labels):
    """Share of `right` (a bool tensor, one per picture) within each style of the pictures."""
    from domain import STYLES
    by = torch.tensor([STYLES.index(l["style"]) for l in labels])
    return {s: round(right[by == i].float().mean().item(), 4) for i, s in enumerate(STYLES)}


def batch_indices(seed, step, n, batch):
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(n, (batch,), generator=g)


def step_generator(seed, step, salt):
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + salt)


class Checkpoint:
    """The state of a run after some step: every named object with a state_dict (model, EMA, optimiser,
    learning-rate schedule). `resume()` loads it into the objects and returns the step (0 for a new run);
    `save(step)` writes it to a temporary name and renames it, so an interrupted save leaves the last one."""

    def __init__(self, path, **objects):
        self.path = path
        self.objects = objects

    def resume(self):
        if not os.path.exists(self.path):
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        for name, obj in self.objects.items():
            obj.load_state_dict(state[name])
        print(f"resumed at step {state['step']}")
        return state["step"]

    def save(self, step):
        tmp = self.path + ".tmp"
        torch.save(dict({k: v.state_dict() for k, v in self.objects.items()}, step=step), tmp)
        os.replace(tmp, self.path)


class Log:
    """Appends one JSON line per logged step to a file and prints a short progress line."""

    def __init__(self, path):
        self.path = path
        self.t0 = time.time()

    def __call__(self, step, total, **values):
        values = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}
        line = dict(step=step, elapsed_s=round(time.time() - self.t0, 1), **values)
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"step {step}/{total} " + " ".join(f"{k}={v}" for k, v in values.items()), flush=True)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def add_device_args(ap):
    """--device cuda|cpu and --threads: every training script runs on either (same code, same seeds)."""
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda trains in bf16 autocast (weights, optimiser and EMA stay f32); cpu in f32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="stop early (with a checkpoint, saving what was trained) once this much wall time has "
                         "passed; the log says at which step, and --steps N with that step reproduces the run")


def start_run(ap):
    """Parses a training script's arguments and sets up what every stage needs: the device (and torch's
    threads), the seed, the work folder, the training labels and pictures (uint8, on the CPU)."""
    args = ap.parse_args()
    device = setup_device(args)
    torch.manual_seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    labels = read_labels(args.data)
    return args, device, labels, load_images(args.data, labels)


def setup_device(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible to PyTorch")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(args.device)


def autocast(device):
    """bf16 autocast on CUDA for the matrix products (weights, optimiser and EMA stay f32);
    nothing on the CPU, where the reference runs were f32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Deadline:
    """Wall-clock budget of a run (--max-seconds); 0 means none."""

    def __init__(self, seconds):
        self.end = time.time() + seconds if seconds else None

    def left(self):
        return float("inf") if self.end is None else self.end - time.time()

    def expired(self):
        return self.left() <= 0


def dihedral(x, k):
    """The k-th of the 8 flips and quarter turns of [..., H, W] pictures (k in 0..8). Every label of the
    domain (category, colour, style) is unchanged by them, and the renderer's rotations and stripe angles
    are uniform, so the transformed pictures are drawn from the same distribution."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, (-2, -1))


def replace_dir(target, save):
    """save(tmp) then rename over target, so an interrupted save never leaves a half-written folder."""
    import shutil
    tmp = target + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


class WsdSchedule:
    """Learning-rate factor: linear warm-up, constant, then a cosine decay to `floor` over the last steps.

    The decay starts at `decay_start` (a step) when it is given; otherwise, with a wall-clock budget
    (`budget_s`, counted from construction), the run decides it once `decay_fraction` of the budget has
    passed: it decays over as many steps as steps-so-far × (1 − f) / f, so the run ends near its budget.
    Either way the log records both steps, and `--steps END --decay-start START` reproduces the same
    schedule on any machine.
    """

    def __init__(self, steps, warmup, decay_start=None, decay_fraction=0.8, floor=0.1, budget_s=0):
        self.steps, self.warmup, self.floor, self.decay_fraction = steps, warmup, floor, decay_fraction
        self.fixed = decay_start is not None
        self.decay_start = decay_start if decay_start is not None else int(steps * decay_fraction)
        self.budget_s, self.deadline, self.t0 = budget_s, Deadline(budget_s), time.time()

    def set_lr(self, opt, peak, step, label="lr"):
        """Before `step`: moves the decay to fit the time still left once it is due, then sets the rate."""
        if not self.fixed and self.deadline.end is not None and step < self.decay_start \
                and time.time() - self.t0 >= self.budget_s * self.decay_fraction:
            self.decay_start = step
            self.steps = min(self.steps, step + max(1, int(step * (1 - self.decay_fraction) / self.decay_fraction)))
            print(f"{label}: decay from step {self.decay_start} to {self.steps} (wall-clock budget)", flush=True)
        for g in opt.param_groups:
            g["lr"] = peak * self(step)

    def __call__(self, s):
        w = min(1.0, (s + 1) / self.warmup) if self.warmup else 1.0
        if s < self.decay_start:
            return w
        p = min(1.0, (s - self.decay_start) / max(1, self.steps - self.decay_start))
        return w * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * p)))

    def state_dict(self):
        return {"steps": self.steps, "decay_start": self.decay_start}

    def load_state_dict(self, d):
        self.steps, self.decay_start = d["steps"], d["decay_start"]


def random_affine(x_u8, generator, scale=(0.85, 1.05), shift=0.08):
    """Each picture of a uint8 [N, 3, H, W] batch turned by its own random angle, scaled and shifted a
    little (the border pixels, i.e. the background, fill what comes in from outside), then flipped at
    random. Labels are unchanged: the renderer draws every angle, sizes of 40-75 % and any position, so a
    ViT that sees the transformed pictures sees new pictures of the same distribution; with a few thousand
    renders it otherwise learns them by heart (docs/default-model.md, GPU run 2)."""
    import math
    import torch.nn.functional as F
    n = x_u8.shape[0]
    r = torch.rand(n, 5, generator=generator).to(x_u8.device)
    theta = r[:, 0] * 2 * math.pi
    s = scale[0] + (scale[1] - scale[0]) * r[:, 1]
    flip = torch.where(r[:, 4] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(theta) / s, torch.sin(theta) / s
    mat = torch.stack([torch.stack([cos * flip, -sin, (r[:, 2] - 0.5) * 2 * shift], 1),
                       torch.stack([sin * flip, cos, (r[:, 3] - 0.5) * 2 * shift], 1)], 1)
    grid = F.affine_grid(mat, list(x_u8.shape), align_corners=False)
    out = F.grid_sample(x_u8.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)
