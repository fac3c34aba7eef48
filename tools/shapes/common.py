"""Shared pieces of the default model's training scripts: data, tokenizer, resumable loops.

Resuming is exact: batch s is drawn from a generator seeded by (seed, s), so a run resumed from the
checkpoint of step s draws the same batches as one that never stopped, and the checkpoint holds the
model, the optimiser (and the EMA where there is one) as they were after step s.
"""
import json
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
    arr = np.stack([np.asarray(Image.open(os.path.join(folder, l["file"])).convert("RGB")) for l in labels])
    arr = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    if cache:
        np.save(path + ".tmp.npy", arr)
        os.replace(path + ".tmp.npy", path)
    return torch.from_numpy(arr)


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
