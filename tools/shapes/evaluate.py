#!/usr/bin/env python3
"""Evaluates a bundle on the shapes domain with the independent judge (tools/shapes/judge.py).

    python3 tools/shapes/evaluate.py --bundle www/models/default --judge tools/shapes/model/judge \
        --work WORK/eval --out docs/default-model-eval.json [--control-clip BIN] [--seeds 1000,1001,1002,1003]

Pictures come from our Rust pipeline (`control-clip generate --batch`, the bundle's recommended steps,
guidance and size, the CPU backend). Rows:
- plain: "a {colour} {category}" for every (category, colour) pair and every seed: category and colour
  accuracy;
- descriptive: "a {colour} {category} {plain description of the style}" for every style, on half of the
  (category, colour) pairs (those whose indices sum to an even number: 24 pairs, every category and colour
  three times), first seed: style (and category, colour) accuracy; `--all-triples` takes every pair;
- style-name: "a {colour} {category} in {style} style", same triples and seeds;
- diversity: the mean pairwise distance between the seeds of one plain prompt (root mean square over
  pixels and channels, in [0, 1] units), and the same figure for renders of those pairs as a yardstick.
The evaluation seeds are never used to choose settings (docs/default-model.md).
`--grid PNG` also writes a picture of what was judged: one row per category, one column per style, the
descriptive prompt on the left half and the style-name prompt on the right (the first colour of that
row's evaluated pairs, the first seed).

    python3 tools/shapes/evaluate.py --check-expected --judge tools/shapes/model/judge

has the judge read tests/browser/expected/default.png (the page's default picture) and exits 1 unless it
sees the category, colour and style its prompt (tests/browser/expected/default.json) names.
"""
import argparse
import itertools
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from domain import CATEGORIES, COLORS, STYLE_DESCRIPTIONS, STYLES, descriptive_prompt, plain_prompt, style_name_prompt  # noqa: E402

DEFAULT_BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/control-clip/target")),
                           "debug", "control-clip")


def rows(seeds, all_triples=False):
    out = []
    for k, c in itertools.product(CATEGORIES, COLORS):
        for s in seeds:
            out.append(dict(kind="plain", prompt=plain_prompt(k, c), category=k, color=c, style=None, seed=s))
    for k, c, st in itertools.product(CATEGORIES, COLORS, STYLES):
        if not all_triples and (CATEGORIES.index(k) + COLORS.index(c)) % 2:
            continue
        for s in seeds[:1]:
            out.append(dict(kind="descriptive", prompt=descriptive_prompt(k, c, st), category=k, color=c, style=st,
                            seed=s))
            out.append(dict(kind="style-name", prompt=style_name_prompt(k, c, st), category=k, color=c, style=st,
                            seed=s))
    return out


def generate(binary, bundle, work, todo, backend, extra, jobs):
    """`control-clip generate --batch`, split over `jobs` processes (the CPU backend runs on one thread).

    Each of `todo` has prompt, seed and file (relative to `work`), and may have category_weight and
    style_weight (Control-CLIP's λ_c, λ_s for that picture)."""
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    d = manifest.get("defaults", {})
    procs = []
    for j in range(jobs):
        batch = os.path.join(work, f"batch-{j}.jsonl")
        with open(batch, "w") as f:
            for r in todo[j::jobs]:
                line = dict(prompt=r["prompt"], seed=r["seed"], out=r["file"])
                line.update({k: r[k] for k in ("category_weight", "style_weight") if r.get(k) is not None})
                f.write(json.dumps(line) + "\n")
        cmd = [binary, "generate", "--bundle", bundle, "--batch", batch, "--backend", backend,
               "--steps", str(d.get("steps", 20)), "--guidance", str(d.get("guidance", 7.5)),
               "--width", str(d.get("width", 128)), "--height", str(d.get("height", 128))] + extra
        print(" ".join(cmd), flush=True)
        procs.append(subprocess.Popen(cmd, stderr=subprocess.DEVNULL if j else None))
    if any(p.wait() for p in procs):
        sys.exit("generate failed")


def judge_folder(judge_dir, folder, quiet=False):
    """Has the judge (tools/shapes/judge.py) read every picture of FOLDER/labels.jsonl; its records with a
    pred_<head> per head (FOLDER/judged.jsonl)."""
    judge = os.path.join(os.path.dirname(os.path.abspath(__file__)), "judge.py")
    subprocess.run([sys.executable, judge, "classify", "--judge", judge_dir, "--folder", folder], check=True,
                   stdout=subprocess.DEVNULL if quiet else None)
    return common.read_labels_file(os.path.join(folder, "judged.jsonl"))


def accuracy(judged, kind, head):
    sel = [j for j in judged if j["kind"] == kind and j.get(head)]
    return sum(j[head] == j["pred_" + head] for j in sel) / len(sel) if sel else None


def diversity(paths_by_prompt):
    dists = []
    for paths in paths_by_prompt:
        ims = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0 for p in paths]
        for a, b in itertools.combinations(ims, 2):
            dists.append(float(np.sqrt(((a - b) ** 2).mean())))
    return float(np.mean(dists))


def write_grid(path, work, todo):
    """Rows: categories; columns: the styles with descriptive prompts, then with style-name prompts."""
    cells = {}
    for r in todo:
        if r["kind"] in ("descriptive", "style-name"):
            cells.setdefault((r["kind"], r["category"], r["style"]), r)
    size, gap = 128, 4
    cols = [("descriptive", st) for st in STYLES] + [("style-name", st) for st in STYLES]
    grid = Image.new("RGB", (len(cols) * (size + gap) + gap * 3, len(CATEGORIES) * (size + gap)), "white")
    for y, k in enumerate(CATEGORIES):
        for x, (kind, st) in enumerate(cols):
            r = cells.get((kind, k, st))
            if r:
                grid.paste(Image.open(os.path.join(work, r["file"])).convert("RGB"),
                           (x * (size + gap) + (gap * 3 if kind == "style-name" else 0), y * (size + gap)))
    tmp = path + ".tmp.png"
    grid.save(tmp)
    os.replace(tmp, path)
    print(f"grid: {path}")


def labels_of_prompt(prompt):
    """The domain words a prompt names; the style from its plain description or its style name."""
    words = prompt.replace(",", " ").split()
    out = {"category": next((k for k in CATEGORIES if k in words), None),
           "color": next((c for c in COLORS if c in words), None), "style": None}
    for st in STYLES:
        if st in words or any(d in prompt for d in STYLE_DESCRIPTIONS[st]):
            out["style"] = st
    return out


def check_expected(judge_dir):
    import shutil
    import tempfile
    expected = os.path.join(common.REPO, "tests", "browser", "expected")
    settings = json.load(open(os.path.join(expected, "default.json")))
    want = labels_of_prompt(settings["prompt"])
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(expected, "default.png"), os.path.join(tmp, "default.png"))
        with open(os.path.join(tmp, "labels.jsonl"), "w") as f:
            f.write(json.dumps(dict(file="default.png", **want)) + "\n")
        got = judge_folder(judge_dir, tmp)[0]
    ok = all(got["pred_" + k] == v for k, v in want.items() if v)
    print(f"default.png: prompt {settings['prompt']!r} names {want}; the judge sees "
          f"{ {k: got['pred_' + k] for k in want} }: {'ok' if ok else 'MISMATCH'}")
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-expected", action="store_true")
    ap.add_argument("--bundle")
    ap.add_argument("--judge", required=True)
    ap.add_argument("--work")
    ap.add_argument("--out", help="JSON results")
    ap.add_argument("--control-clip", default=DEFAULT_BIN)
    ap.add_argument("--seeds", default="1000,1001,1002,1003")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--renders", help="a rendered folder (render.py --per-class) for the diversity yardstick")
    ap.add_argument("--all-triples", action="store_true")
    ap.add_argument("--jobs", type=int, default=2, help="generate processes side by side (each uses one core)")
    ap.add_argument("--grid", help="write a grid picture of the descriptive and style-name rows here")
    ap.add_argument("--extra", default="", help="more options for generate, e.g. '--style-weight 1'")
    args = ap.parse_args()
    if args.check_expected:
        check_expected(args.judge)
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.work, exist_ok=True)
    todo = rows(seeds, args.all_triples)
    for i, r in enumerate(todo):
        r["file"] = f"{i:05d}.png"
    if not all(os.path.exists(os.path.join(args.work, r["file"])) for r in todo):
        generate(args.control_clip, args.bundle, args.work, todo, args.backend, args.extra.split(), args.jobs)
    with open(os.path.join(args.work, "labels.jsonl"), "w") as f:
        for r in todo:
            f.write(json.dumps(r) + "\n")
    judged = judge_folder(args.judge, args.work)

    by_prompt = {}
    for r in todo:
        if r["kind"] == "plain":
            by_prompt.setdefault(r["prompt"], []).append(os.path.join(args.work, r["file"]))
    result = {
        "bundle": args.bundle, "seeds": seeds, "backend": args.backend, "extra": args.extra,
        "pictures": len(todo),
        "plain": {"category": accuracy(judged, "plain", "category"), "color": accuracy(judged, "plain", "color")},
        "descriptive": {h: accuracy(judged, "descriptive", h) for h in ("style", "category", "color")},
        "style_name": {h: accuracy(judged, "style-name", h) for h in ("style", "category", "color")},
        "descriptive_style_by_style": {
            st: sum(j["pred_style"] == st for j in judged if j["kind"] == "descriptive" and j["style"] == st)
            / sum(1 for j in judged if j["kind"] == "descriptive" and j["style"] == st) for st in STYLES},
        "diversity": diversity(by_prompt.values()),
    }
    if args.renders:
        labels = common.read_labels(args.renders)
        groups = {}
        for l in labels:
            groups.setdefault((l["category"], l["color"]), []).append(os.path.join(args.renders, l["file"]))
        result["diversity_renders"] = diversity([g[: len(seeds)] for g in groups.values()])
    if args.grid:
        write_grid(args.grid, args.work, todo)
    tmp = args.out + ".tmp"
    common.write_json(tmp, result)
    os.replace(tmp, args.out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
