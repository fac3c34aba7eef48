#!/usr/bin/env python3
"""Renders the shapes domain: one shape per 128x128 picture, deterministic from a seed.

    python3 tools/shapes/render.py --out DIR --count N --seed S [--captions] [--per-class K] [--minimal K]

Writes DIR/NNNNNN.png, DIR/labels.jsonl (one line per picture: file, category, color, style, caption, and
with --minimal a style-name `prompt`) and
DIR/domain.json (the fine-tuning dataset format of `control-clip finetune`). Picture i is rendered from
numpy's PCG64 seeded with (S, i), so a folder is the same on every machine and any picture can be re-made
alone. `--per-class K` renders K pictures of every (category, colour, style) triple in turn instead of
drawing the triple at random. `--minimal K` renders Control-CLIP's minimal labelled set (issue 27): K pictures
of every style, their categories and colours taken in turn, so that no style and no category has more than
K pictures (6 K pictures; each category gets 6 K / 8 of them, rounded either way).

What varies inside every picture: position, size (40-75 % of the side), rotation, stripe angle and
spacing, dot size and spacing, checker size and angle, contour width, background tint (light; dark for
neon), the exact colour, and mild pixel noise.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from domain import CATEGORIES, COLORS, STYLES, base_caption, domain_json, training_style_name_prompt  # noqa: E402

SIZE = 128
SS = 2  # supersampling factor for anti-aliased edges
BIG = SIZE * SS

RGB = {
    "red": (220, 35, 35), "orange": (245, 135, 20), "yellow": (238, 208, 25),
    "green": (35, 165, 55), "blue": (35, 85, 220), "purple": (140, 45, 190),
}


def polygon(n, r, rot, cx, cy, inner=None):
    pts = []
    for i in range(n * (2 if inner else 1)):
        if inner:
            rr = r if i % 2 == 0 else r * inner
            a = rot + math.pi * i / n
        else:
            rr = r
            a = rot + 2 * math.pi * i / n
        pts.append((cx + rr * math.sin(a), cy - rr * math.cos(a)))
    return pts


def transform(pts, rot, cx, cy):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def shape_mask(category, cx, cy, r, rot):
    """A supersampled 'L' mask of the shape: r is the half-extent in big pixels."""
    m = Image.new("L", (BIG, BIG), 0)
    d = ImageDraw.Draw(m)
    if category == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif category == "square":
        d.polygon(polygon(4, r * 1.0, rot + math.pi / 4, cx, cy), fill=255)
    elif category == "triangle":
        d.polygon(polygon(3, r, rot, cx, cy + r * 0.15), fill=255)
    elif category == "star":
        d.polygon(polygon(5, r, rot, cx, cy, inner=0.45), fill=255)
    elif category == "hexagon":
        d.polygon(polygon(6, r, rot, cx, cy), fill=255)
    elif category == "cross":
        w = 0.34
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
               (-w, -w)]
        d.polygon(transform([(x * r, y * r) for x, y in pts], rot, cx, cy), fill=255)
    elif category == "heart":
        pts = []
        for i in range(120):
            t = 2 * math.pi * i / 120
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x / 17 * r, (y + 2) / 17 * r))
        d.polygon(transform(pts, rot * 0.3, cx, cy), fill=255)
    elif category == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        off = 0.42 * r
        ox, oy = cx + off * math.cos(rot), cy + off * math.sin(rot)
        rr = 0.82 * r
        d.ellipse([ox - rr, oy - rr, ox + rr, oy + rr], fill=0)
    else:
        raise ValueError(category)
    return m


def erode(mask, width):
    """Mask shrunk by `width` big pixels (a square structuring element, applied as a few small passes)."""
    out = mask
    while width > 0:
        k = min(width, 4)
        out = out.filter(ImageFilter.MinFilter(2 * k + 1))
        width -= k
    return out


def pattern(rng, style):
    """A [BIG, BIG] float array in {0, 1}: 1 where the pattern's light colour shows."""
    yy, xx = np.mgrid[0:BIG, 0:BIG].astype(np.float32)
    ang = rng.uniform(0, math.pi)
    u = xx * math.cos(ang) + yy * math.sin(ang)
    v = -xx * math.sin(ang) + yy * math.cos(ang)
    if style == "striped":
        period = rng.uniform(9, 17) * SS
        return ((u / period + rng.uniform(0, 1)) % 1.0 < rng.uniform(0.4, 0.55)).astype(np.float32)
    if style == "checkered":
        cell = rng.uniform(6, 11) * SS
        ph = rng.uniform(0, 1, size=2)
        return (((np.floor(u / cell + ph[0]) + np.floor(v / cell + ph[1])) % 2) == 1).astype(np.float32)
    if style == "dotted":
        spacing = rng.uniform(9, 14) * SS
        radius = spacing * rng.uniform(0.22, 0.32)
        ph = rng.uniform(0, 1, size=2)
        gu = (u / spacing + ph[0]) % 1.0 - 0.5
        gv = (v / spacing + ph[1]) % 1.0 - 0.5
        return ((gu ** 2 + gv ** 2) * spacing ** 2 < radius ** 2).astype(np.float32)
    raise ValueError(style)


def geometry(seed, index, triple=None):
    """The first draws of picture (seed, index): its labels and where the shape is. Returns them with the
    generator, which render() goes on drawing from."""
    rng = np.random.Generator(np.random.PCG64([seed, index]))
    if triple is None:
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
        color = COLORS[rng.integers(len(COLORS))]
        style = STYLES[rng.integers(len(STYLES))]
    else:
        category, color, style = triple
    frac = rng.uniform(0.40, 0.75)
    r = frac * BIG / 2
    margin = r + 2 * SS
    cx = rng.uniform(margin, BIG - margin)
    cy = rng.uniform(margin, BIG - margin)
    rot = rng.uniform(0, 2 * math.pi)
    return (category, color, style), (cx, cy, r, rot), rng


def silhouette(seed, index, triple=None):
    """Picture (seed, index)'s shape mask at 128x128 (uint8, 255 inside, anti-aliased as the picture is),
    whatever its style: the dense target of the CLIP vision phase's token labels (train_clip.py)."""
    (category, _, _), (cx, cy, r, rot), _ = geometry(seed, index, triple)
    return category, np.asarray(shape_mask(category, cx, cy, r, rot).resize((SIZE, SIZE), Image.BOX), np.uint8)


def render(seed, index, triple=None):
    (category, color, style), (cx, cy, r, rot), rng = geometry(seed, index, triple)
    base = np.array(RGB[color], np.float32) + rng.normal(0, 8, size=3)
    base = np.clip(base, 0, 255)
    light = np.clip(np.array([248, 248, 248], np.float32) + rng.normal(0, 4, size=3), 225, 255)

    if style == "neon":
        bg = rng.uniform(8, 30) + rng.normal(0, 4, size=3)
    else:
        bg = rng.uniform(205, 245) + rng.normal(0, 8, size=3)
    bg = np.clip(bg, 0, 255).astype(np.float32)
    img = np.ones((BIG, BIG, 3), np.float32) * bg

    mask = shape_mask(category, cx, cy, r, rot)
    m = np.asarray(mask, np.float32)[..., None] / 255.0
    if style == "flat":
        img = img * (1 - m) + base * m
    elif style in ("striped", "checkered", "dotted"):
        p = pattern(rng, style)[..., None]
        fill = base * (1 - p) + light * p
        img = img * (1 - m) + fill * m
    elif style == "outline":
        w = int(rng.uniform(0.06, 0.11) * r + 3 * SS)
        ring = np.clip(m - np.asarray(erode(mask, w), np.float32)[..., None] / 255.0, 0, 1)
        img = img * (1 - ring) + base * ring
    elif style == "neon":
        w = int(rng.uniform(1.5, 3.0) * SS)
        ring = np.clip(m - np.asarray(erode(mask, w), np.float32)[..., None] / 255.0, 0, 1)
        bright = np.clip(base * 1.15 + 40, 0, 255)
        ring_img = Image.fromarray((ring[..., 0] * 255).astype(np.uint8))
        glow = np.asarray(ring_img.filter(ImageFilter.GaussianBlur(rng.uniform(4, 7) * SS)), np.float32)[..., None]
        glow = np.clip(glow / 255.0 * 2.5, 0, 1)
        img = img * (1 - glow) + base * glow
        img = img * (1 - ring) + bright * ring
    else:
        raise ValueError(style)

    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BOX)
    arr = np.asarray(small, np.float32) + rng.normal(0, rng.uniform(1.5, 5.0), size=(SIZE, SIZE, 3))
    out = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    return out, category, color, style, rng


def render_one(job):
    """Renders and saves picture i; returns its labels.jsonl line. Depends on (seed, i) only."""
    out, seed, i, triple, describe_fraction, prompts = job
    img, k, c, s, rng = render(seed, i, triple)
    name = f"{i:06d}.png"
    img.save(os.path.join(out, name))
    import random
    crng = random.Random(int(rng.integers(1 << 62)))
    caption = base_caption(crng, k, c, s, describe_style=crng.random() < describe_fraction)
    line = {"file": name, "category": k, "color": c, "style": s, "caption": caption}
    if prompts:
        line["prompt"] = training_style_name_prompt(crng, k, c, s)
    return json.dumps(line)


def mask_one(job):
    seed, i, triple = job
    return silhouette(seed, i, triple)


def write_masks(out, seed, jobs, processes):
    """DIR/masks.npy: uint8 [N, 128, 128], picture i's silhouette; refuses a folder whose labels disagree."""
    path = os.path.join(out, "labels.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: missing; render the pictures first (the same command without --masks)")
    with open(path) as f:
        labels = [json.loads(line) for line in f if line.strip()]
    if len(labels) != len(jobs):
        raise SystemExit(f"{path}: {len(labels)} pictures, but these arguments describe {len(jobs)}")
    work = [(seed, i, t) for i, t in enumerate(jobs)]
    if processes > 1:
        import multiprocessing
        with multiprocessing.Pool(processes) as pool:
            results = pool.map(mask_one, work, chunksize=256)
    else:
        results = [mask_one(w) for w in work]
    for i, ((category, _), line) in enumerate(zip(results, labels)):
        if line["category"] != category:
            raise SystemExit(f"{path}: line {i + 1} is a {line['category']}, but seed {seed} draws a {category} "
                             "there: not the folder these arguments rendered")
    tmp = os.path.join(out, "masks.tmp.npy")
    np.save(tmp, np.stack([m for _, m in results]))
    os.replace(tmp, os.path.join(out, "masks.npy"))
    print(f"{len(results)} masks in {out}/masks.npy")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=0, help="pictures with a random (category, colour, style)")
    ap.add_argument("--per-class", type=int, default=0, help="pictures per (category, colour, style) triple")
    ap.add_argument("--minimal", type=int, default=0,
                    help="K pictures per style, categories and colours in turn (at most K per category)")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--jobs", type=int, default=1, help="render in this many processes (same pictures)")
    ap.add_argument("--masks", action="store_true",
                    help="write only DIR/masks.npy, every picture's shape mask, for a folder this same command "
                         "(without --masks) rendered; checked against its labels.jsonl")
    ap.add_argument("--describe-fraction", type=float, default=0.25,
                    help="share of captions that describe the style in plain words")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    jobs = []
    if args.per_class:
        triples = [(k, c, s) for k in CATEGORIES for c in COLORS for s in STYLES]
        jobs = [t for _ in range(args.per_class) for t in triples]
    elif args.minimal:
        jobs = [(CATEGORIES[i % len(CATEGORIES)], COLORS[i % len(COLORS)], STYLES[i // args.minimal])
                for i in range(args.minimal * len(STYLES))]
    else:
        jobs = [None] * args.count
    if args.masks:
        write_masks(args.out, args.seed, jobs, args.jobs)
        return
    # The minimal set also gets each picture's style-name `prompt`, which the denoising term L_den reads.
    work = [(args.out, args.seed, i, triple, args.describe_fraction, bool(args.minimal)) for i, triple in enumerate(jobs)]
    if args.jobs > 1:
        import multiprocessing
        with multiprocessing.Pool(args.jobs) as pool:
            lines = pool.map(render_one, work, chunksize=64)
    else:
        lines = [render_one(w) for w in work]
    tmp = os.path.join(args.out, "labels.jsonl.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(args.out, "labels.jsonl"))
    with open(os.path.join(args.out, "domain.json"), "w") as f:
        json.dump(domain_json(), f, indent=1)
    print(f"{len(lines)} pictures in {args.out}")


if __name__ == "__main__":
    main()
