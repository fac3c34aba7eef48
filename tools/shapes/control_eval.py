#!/usr/bin/env python3
"""Control-CLIP's evaluation protocol on the shapes domain (issue 27; results in docs/control-results.md).

    python3 tools/shapes/control_eval.py --base www/models/default --control main=BUNDLE \\
        [--control no-trip=BUNDLE ...] --judge tools/shapes/model/judge --work WORK --out RESULTS.json \\
        [--seeds 1000,1001] [--rows a,b,c,plain,d,e] [--jobs 2]

Every picture comes from our Rust pipeline (`control-clip generate --batch`, the bundle's recommended steps,
guidance and size, the CPU backend) and is read by the independent judge (tools/shapes/judge.py). Rows:

- a: the base bundle, style-name prompts ("a red star in striped style"), every (category, colour, style)
  triple × every seed;
- b: the base bundle, descriptive prompts ("a red star with stripes"), the same: the frozen UNet's ceiling;
- c: the `main` Control-CLIP bundle, style-name prompts, its recommended weights (manifest defaults);
- plain: plain prompts ("a red star"), every (category, colour) pair × every seed, base bundle and `main`
  at its recommended weights (the paper says the generator's own behaviour is kept);
- d: `main`, style-name prompts on SUBSET (one triple per (category, style), colours in turn: 48), every
  seed, λ_s ∈ {0, 0.25, 0.5, 1, 1.5, 2} at the recommended λ_c, and λ_c ∈ {0, 0.5, 1, 1.5} at the
  recommended λ_s;
- e: every other `--control NAME=BUNDLE` (ablations, data budgets), style-name prompts on SUBSET, its own
  recommended weights; rows a-c are repeated on SUBSET so that they compare.

Columns: the judge's style, category and colour accuracy; diversity (the mean pairwise RMS distance between
the seeds of one prompt, pixels in [0, 1]). Pictures are cached in WORK/pictures by (bundle, prompt, seed,
weights), so a rerun or another row with the same picture generates nothing. The evaluation seeds must
never be the ones settings were chosen on: choose on other seeds (e.g. `--seeds 900`), then run once on
1000,1001.
"""
import argparse
import hashlib
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import evaluate  # noqa: E402
from domain import CATEGORIES, COLORS, STYLES, descriptive_prompt, plain_prompt, style_name_prompt  # noqa: E402

ALL_TRIPLES = list(itertools.product(CATEGORIES, COLORS, STYLES))
# One triple per (category, style), the colour taken in turn, so that every category, colour and style occurs.
SUBSET = [(k, COLORS[(i + j) % len(COLORS)], s) for i, k in enumerate(CATEGORIES) for j, s in enumerate(STYLES)]
STYLE_SWEEP = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
CATEGORY_SWEEP = [0.0, 0.5, 1.0, 1.5]
PROMPTS = {"style-name": style_name_prompt, "descriptive": descriptive_prompt}


def defaults(bundle):
    d = json.load(open(os.path.join(bundle, "manifest.json"))).get("defaults", {})
    return d.get("category_weight", 1.0), d.get("style_weight", 0.0)


def pictures(bundle, kind, triples, seeds, weights):
    """The pictures of one row: dicts with prompt, labels, seed, weights and a cache file name."""
    out = []
    for k, c, s in triples:
        prompt = plain_prompt(k, c) if kind == "plain" else PROMPTS[kind](k, c, s)
        for seed in seeds:
            r = dict(kind=kind, prompt=prompt, category=k, color=c, style=None if kind == "plain" else s,
                     seed=seed, bundle=bundle)
            if weights is not None:
                r["category_weight"], r["style_weight"] = weights
            key = json.dumps([os.path.abspath(bundle), prompt, seed, weights])
            r["file"] = hashlib.sha1(key.encode()).hexdigest()[:16] + ".png"
            out.append(r)
    return out


def protocol(args, controls, seeds, rows):
    """[(row name, description, pictures)] of the rows asked for."""
    base, main = args.base, controls.get("main")
    pairs = [(k, c, None) for k in CATEGORIES for c in COLORS]
    spec = []
    if "a" in rows:
        spec.append(("a", "base, style-name prompt", pictures(base, "style-name", ALL_TRIPLES, seeds, None)))
    if "b" in rows:
        spec.append(("b", "base, descriptive prompt", pictures(base, "descriptive", ALL_TRIPLES, seeds, None)))
    if main and "c" in rows:
        spec.append(("c", f"Control-CLIP, style-name prompt, weights {defaults(main)}",
                     pictures(main, "style-name", ALL_TRIPLES, seeds, defaults(main))))
    if "plain" in rows:
        spec.append(("plain-base", "base, plain prompt", pictures(base, "plain", pairs, seeds, None)))
        if main:
            spec.append(("plain-cc", f"Control-CLIP, plain prompt, weights {defaults(main)}",
                         pictures(main, "plain", pairs, seeds, defaults(main))))
    if "d" in rows or "e" in rows:
        spec.append(("a@subset", "base, style-name prompt", pictures(base, "style-name", SUBSET, seeds, None)))
        spec.append(("b@subset", "base, descriptive prompt", pictures(base, "descriptive", SUBSET, seeds, None)))
    if main and "d" in rows:
        lc, ls = defaults(main)
        for w in args.style_sweep:
            spec.append((f"d:λs={w:g}", f"Control-CLIP, λ_c {lc:g}, λ_s {w:g}",
                         pictures(main, "style-name", SUBSET, seeds, (lc, w))))
        for w in args.category_sweep:
            spec.append((f"d:λc={w:g}", f"Control-CLIP, λ_c {w:g}, λ_s {ls:g}",
                         pictures(main, "style-name", SUBSET, seeds, (w, ls))))
    if "e" in rows:
        for name, bundle in controls.items():
            spec.append((f"e:{name}", f"{name}, style-name prompt, weights {defaults(bundle)}",
                         pictures(bundle, "style-name", SUBSET, seeds, defaults(bundle))))
    return spec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the base bundle (no Control-CLIP encoders)")
    ap.add_argument("--control", action="append", default=[], metavar="NAME=BUNDLE",
                    help="a Control-CLIP bundle; `main` is the one rows c, plain and d use")
    ap.add_argument("--judge", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True, help="JSON results")
    ap.add_argument("--seeds", default="1000,1001")
    ap.add_argument("--rows", default="a,b,c,plain,d,e")
    ap.add_argument("--control-clip", default=evaluate.DEFAULT_BIN)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--jobs", type=int, default=2, help="generate processes side by side (each uses one core)")
    ap.add_argument("--style-sweep", default=",".join(map(str, STYLE_SWEEP)), help="row d's λ_s values")
    ap.add_argument("--category-sweep", default=",".join(map(str, CATEGORY_SWEEP)), help="row d's λ_c values")
    args = ap.parse_args()
    args.style_sweep = [float(w) for w in args.style_sweep.split(",") if w]
    args.category_sweep = [float(w) for w in args.category_sweep.split(",") if w]
    controls = dict(c.split("=", 1) for c in args.control)
    seeds = [int(s) for s in args.seeds.split(",")]
    spec = protocol(args, controls, seeds, set(args.rows.split(",")))

    folder = os.path.join(args.work, "pictures")
    os.makedirs(folder, exist_ok=True)
    unique = {r["file"]: r for _, _, rs in spec for r in rs}
    by_bundle = {}
    for r in unique.values():
        if not os.path.exists(os.path.join(folder, r["file"])):
            by_bundle.setdefault(r["bundle"], []).append(r)
    for bundle, todo in by_bundle.items():
        print(f"{bundle}: {len(todo)} pictures to generate", flush=True)
        evaluate.generate(args.control_clip, bundle, folder, todo, args.backend, [], args.jobs)

    with open(os.path.join(folder, "labels.jsonl"), "w") as f:
        for r in unique.values():
            f.write(json.dumps(r) + "\n")
    judged = {j["file"]: j for j in evaluate.judge_folder(args.judge, folder, quiet=True)}

    results = {"seeds": seeds, "base": args.base, "controls": controls, "rows": []}
    for name, what, rs in spec:
        js = [dict(judged[r["file"]], kind="row") for r in rs]
        by_prompt = {}
        for r in rs:
            by_prompt.setdefault(r["prompt"], []).append(os.path.join(folder, r["file"]))
        row = {"row": name, "what": what, "pictures": len(rs),
               **{h: evaluate.accuracy(js, "row", h) for h in ("style", "category", "color")},
               "diversity": evaluate.diversity(by_prompt.values()) if len(seeds) > 1 else None}
        results["rows"].append(row)
    tmp = args.out + ".tmp"
    common.write_json(tmp, results)
    os.replace(tmp, args.out)
    pct = lambda v: "—" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    print("| row | what | pictures | style | category | colour | diversity |\n|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        div = "—" if r["diversity"] is None else f"{r['diversity']:.3f}"
        print(f"| {r['row']} | {r['what']} | {r['pictures']} | {pct(r['style'])} | {pct(r['category'])} | "
              f"{pct(r['color'])} | {div} |")


if __name__ == "__main__":
    main()
