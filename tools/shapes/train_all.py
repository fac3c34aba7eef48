#!/usr/bin/env python3
"""Every stage of the default model in one command, sized for a wall-clock budget (one GPU run).

    python3 tools/shapes/train_all.py --work W --out OUT --device cuda            # the second design's run
    python3 tools/shapes/train_all.py --work W --out OUT --device cpu --tiny      # the same flow, minutes on a CPU

1. render the training set (seed 1) and the held-out set (seed 2, 4 per triple: the judge's and the gates');
2. in parallel: the CLIP (train_clip.py, LiT) and one autoencoder per --latent-channels (train_ae.py);
3. the gates: CLIP zero-shot (clip_zero_shot.py) and the judge on reconstructions (ae_gate.py); the
   autoencoder is the one with the fewest latent channels that passes (else the best one);
4. in parallel: the UNet variants (train_unet.py) — the chosen design and one change each (no Min-SNR, the
   first design's schedule, a narrower UNet, the other autoencoder): short runs of equal wall time, the
   ablation table of docs/default-model.md;
5. the probe (probe.py, seeds 600-795, never the evaluation's) on every variant at guidance 3, 5 and 7;
6. OUT: f16 model folders as archives of at most 16 MiB (clip, autoencoders, one per UNet, best first) and
   meta.tar.gz (summary.json, the gates, the probes and their grids, every training log).

A stage that fails is reported in summary.json and the run goes on with what it has. Each training script
writes the step counts that reproduce it (done.json, phases.json, its log).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
T0 = time.time()


def say(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def start(name, args, work, threads):
    """Starts one script of tools/shapes as a process; its output goes to WORK/logs/NAME.txt."""
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    log = open(os.path.join(work, "logs", f"{name}.txt"), "w")
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))
    say(f"start {name}: {' '.join(args)}")
    return name, subprocess.Popen([sys.executable, os.path.join(HERE, args[0])] + args[1:], stdout=log,
                                  stderr=subprocess.STDOUT, env=env), log


def wait(procs, work, timeout=None):
    """Waits for every process; returns {name: exit code} and prints the tail of each log."""
    codes = {}
    for name, p, log in procs:
        try:
            codes[name] = p.wait(timeout=max(1, timeout - (time.time() - T0)) if timeout else None)
        except subprocess.TimeoutExpired:
            p.kill()
            codes[name] = "killed"
        log.close()
        tail = open(os.path.join(work, "logs", f"{name}.txt")).read().splitlines()[-4:]
        say(f"{name}: exit {codes[name]}\n    " + "\n    ".join(tail))
    return codes


def read_json(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


def half_copy(kind, src, dst):
    """The f16 copy of a model folder, saved by its own library (what export.py and the bundle read)."""
    if kind == "clip":
        from transformers import CLIPModel
        m = CLIPModel.from_pretrained(src).half()
        m.save_pretrained(dst, safe_serialization=True)
        for f in ("preprocessor_config.json", "tokenizer.json"):
            shutil.copy(os.path.join(src, f), dst)
    elif kind == "ae":
        from diffusers import AutoencoderTiny
        AutoencoderTiny.from_pretrained(src).half().save_pretrained(dst, safe_serialization=True)
    else:
        from diffusers import UNet2DConditionModel
        UNet2DConditionModel.from_pretrained(src).half().save_pretrained(dst, safe_serialization=True)


def archive(path, members):
    """members: [(arcname, path)]; skips what does not exist."""
    with tarfile.open(path, "w:gz") as t:
        for arc, p in members:
            if os.path.exists(p):
                t.add(p, arcname=arc)
    return os.path.getsize(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a few steps of everything, to test the flow on a CPU")
    ap.add_argument("--train-count", type=int, default=24000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--stage1-seconds", type=float, default=110)
    ap.add_argument("--unet-seconds", type=float, default=240)
    ap.add_argument("--latent-channels", default="8,16")
    ap.add_argument("--deadline", type=float, default=560, help="kill whatever still runs at this many seconds")
    ap.add_argument("--clip-init", help="continue the CLIP from this CLIPModel folder (train_clip.py --init)")
    ap.add_argument("--ae-init", help="continue the autoencoder from this folder (train_ae.py --init); with one "
                    "--latent-channels")
    ap.add_argument("--ae-crop", type=int, default=0, help="train the autoencoder on crops of this side (0: whole)")
    ap.add_argument("--vision-fraction", type=float, default=0.5, help="train_clip.py --vision-fraction")
    ap.add_argument("--heldout-jobs", type=int, default=2)
    ap.add_argument("--variants", help="comma-separated UNet variants to train (main, no-min-snr, sd-eps, narrow, "
                    "aeN); default all")
    ap.add_argument("--unet-parallel", type=int, default=1, help="UNet runs at a time")
    ap.add_argument("--ae-from", help="use this trained autoencoder folder (its gate is still measured) "
                    "instead of training one; --latent-channels must name its channels")
    ap.add_argument("--vision-augment", default="dihedral", help="train_clip.py --vision-augment")
    ap.add_argument("--vision-layers", type=int, default=0, help="train_clip.py --vision-layers (with --clip-init)")
    ap.add_argument("--require-gates", action="store_true",
                    help="train no UNet unless the CLIP's and the autoencoder's gates hold")
    ap.add_argument("--stop-after-gates", action="store_true", help="stages 1-3 only (CLIP, autoencoder, gates)")
    args = ap.parse_args()
    W, OUT = os.path.abspath(args.work), os.path.abspath(args.out)
    os.makedirs(W, exist_ok=True)
    os.makedirs(OUT, exist_ok=True)
    data, held = os.path.join(W, "data", "train"), os.path.join(W, "data", "heldout")
    dev = ["--device", args.device]
    tiny = args.tiny
    threads = 2 if args.device == "cuda" else 1
    summary = {"device": args.device, "tiny": tiny, "stages": {}}

    # 1. Data.
    count = 600 if tiny else args.train_count
    procs = [start("render-train", ["render.py", "--out", data, "--count", str(count), "--seed", "1",
                                    "--jobs", str(max(1, args.jobs - args.heldout_jobs))], W, 1),
             start("render-heldout", ["render.py", "--out", held, "--per-class", "1" if tiny else "4",
                                      "--seed", "2", "--jobs", str(args.heldout_jobs)], W, 1)]
    summary["stages"]["render"] = wait(procs, W)
    import common
    common.load_images(data, common.read_labels(data))  # the images.npy cache, once, before the readers
    common.load_images(held, common.read_labels(held))
    say("data ready")

    # 2. CLIP and the autoencoders, side by side.
    s1 = args.stage1_seconds
    steps = (lambda n: str(n if not tiny else 20))
    clip_dir = os.path.join(W, "models", "clip")
    procs = [start("clip", ["train_clip.py", "--data", data, "--work", os.path.join(W, "clip"), "--out", clip_dir,
                            "--vision-steps", steps(6000), "--text-steps", steps(6000), "--batch",
                            "256" if not tiny else "32", "--max-seconds", str(s1), "--checkpoint-every", "1000"] + dev
                   + (["--init", args.clip_init] if args.clip_init else [])
                   + ["--vision-fraction", str(args.vision_fraction), "--vision-augment", args.vision_augment]
                   + (["--vision-layers", str(args.vision_layers)] if args.vision_layers else []),
                   W, threads)]
    aes = {}
    for lc in [int(x) for x in args.latent_channels.split(",")]:
        aes[lc] = os.path.join(W, "models", f"ae{lc}")
        if args.ae_from:
            shutil.copytree(args.ae_from, aes[lc], dirs_exist_ok=True)
            continue
        procs.append(start(f"ae{lc}", ["train_ae.py", "--data", data, "--work", os.path.join(W, f"ae{lc}"),
                                       "--out", aes[lc], "--levels", "4", "--width", "48", "--latent-channels",
                                       str(lc), "--crop", str(args.ae_crop), "--batch", "64" if not tiny else "4", "--steps",
                                       steps(8000), "--lr", "2e-3", "--mean-penalty", "1.0", "--augment", "--schedule", "wsd",
                                       "--max-seconds", str(s1), "--checkpoint-every", "1000"] + dev
                                      + (["--init", args.ae_init] if args.ae_init else []), W, threads))
    summary["stages"]["stage1"] = wait(procs, W, args.deadline)

    # 3. Gates.
    procs = [start("gate-clip", ["clip_zero_shot.py", "--clip", clip_dir, "--data", held, "--device", args.device,
                                 "--out", os.path.join(W, "gate-clip.json")], W, threads)]
    for lc, d in aes.items():
        procs.append(start(f"gate-ae{lc}", ["ae_gate.py", "--autoencoder", d, "--data", held, "--device",
                                            args.device, "--out", os.path.join(W, f"gate-ae{lc}.json")], W, threads))
    wait(procs, W, args.deadline)
    summary["gate_clip"] = read_json(os.path.join(W, "gate-clip.json"))
    gates = {lc: read_json(os.path.join(W, f"gate-ae{lc}.json")) for lc in aes}
    summary["gate_ae"] = gates
    passing = [lc for lc in sorted(aes) if gates[lc] and gates[lc]["gate"]]
    scored = [lc for lc in sorted(aes) if gates[lc]]
    chosen = passing[0] if passing else (max(scored, key=lambda lc: (min(gates[lc]["style_accuracy"].values()),
                                                                      min(gates[lc]["accuracy"].values())))
                                         if scored else min(aes))
    other = [lc for lc in sorted(aes) if lc != chosen]
    summary["autoencoder"] = {"chosen": chosen, "passing": passing}
    say(f"autoencoder: {chosen} latent channels (passing: {passing})")

    gates_hold = bool(summary["gate_clip"] and summary["gate_clip"]["gate"]) and bool(passing)
    summary["gates_hold"] = gates_hold
    if args.stop_after_gates or (args.require_gates and not gates_hold):
        if not gates_hold:
            say("a gate does not hold: no UNet trains on these stages (--require-gates)")
        variants = {}
        order = []
    else:
        order = train_unets(args, W, data, clip_dir, aes, chosen, other, summary, dev, threads)
        variants = summary["variants"]
    export(args, W, OUT, clip_dir, aes, variants, order, summary)


def train_unets(args, W, data, clip_dir, aes, chosen, other, summary, dev, threads):
    """Stages 4 and 5: the UNet variants and their probes; returns the variants best first."""
    import common
    tiny = args.tiny
    steps = (lambda n: str(n if not tiny else 20))
    # Latents once per autoencoder (the UNet runs read the cache).
    import torch
    import train_unet
    labels = common.read_labels(data)
    images = common.load_images(data, labels)
    for lc in [chosen] + other[:1]:
        if os.path.exists(aes[lc]):
            train_unet.encode_latents(data, images, aes[lc], torch.device(args.device), not tiny)
    del images
    torch.cuda.empty_cache() if args.device == "cuda" else None
    say("latents encoded")

    # 4. UNet variants, side by side, equal wall time.
    base = dict(schedule="zero-snr-v", gamma="5", channels="64,128,128", ae=chosen)
    variants = {"main": base,
                "no-min-snr": dict(base, gamma="0"),
                "sd-eps": dict(base, schedule="sd-eps"),
                "narrow": dict(base, channels="64,96,96")}
    if other:
        variants[f"ae{other[0]}"] = dict(base, ae=other[0])
    if args.variants:
        variants = {n: variants[n] for n in args.variants.split(",") if n in variants}
    summary["variants"] = variants
    # At most --unet-parallel runs at a time, each with --unet-seconds (run 1: five processes time-sliced on
    # one GPU each ran at about 8 steps a second, far below the plan).
    runnable = [(n, v) for n, v in variants.items() if os.path.exists(aes[v["ae"]])]
    summary["stages"]["unet"] = {}
    for first in range(0, len(runnable), args.unet_parallel):
        procs = [unet_process(args, W, data, clip_dir, aes, name, v, dev, threads, steps)
                 for name, v in runnable[first:first + args.unet_parallel]]
        summary["stages"]["unet"].update(wait(procs, W, args.deadline))

    # 5. Probes.
    procs = []
    for name, v in variants.items():
        run = os.path.join(W, "models", f"unet-{name}")
        if os.path.exists(os.path.join(run, "unet")):
            procs.append(start(f"probe-{name}", [
                "probe.py", "--clip", clip_dir, "--autoencoder", aes[v["ae"]], "--unet", os.path.join(run, "unet"),
                "--scheduler", os.path.join(run, "scheduler"), "--out", os.path.join(W, f"probe-{name}"),
                "--guidance", "3,5,7", "--steps", "15" if not tiny else "2", "--device", args.device], W, threads))
    wait(procs, W, args.deadline)
    probes = {}
    for name in variants:
        p = read_json(os.path.join(W, f"probe-{name}", "probe.json"))
        if p:
            best = max(p["by_guidance"].items(), key=lambda kv: kv[1]["score"])
            probes[name] = {"best_guidance": best[0], "score": best[1]["score"], "by_guidance": p["by_guidance"]}
        summary.setdefault("unet_runs", {})[name] = read_json(os.path.join(W, f"unet-{name}", "done.json"))
    summary["probes"] = probes
    order = sorted(probes, key=lambda n: -probes[n]["score"])
    summary["ranking"] = order
    say(f"probe ranking: {[(n, probes[n]['score'], probes[n]['best_guidance']) for n in order]}")
    return order


def unet_process(args, W, data, clip_dir, aes, name, v, dev, threads, steps):
    tiny = args.tiny
    return start(f"unet-{name}", [
        "train_unet.py", "--data", data, "--clip", clip_dir, "--autoencoder", aes[v["ae"]],
        "--work", os.path.join(W, f"unet-{name}"), "--out", os.path.join(W, "models", f"unet-{name}"),
        "--schedule", v["schedule"], "--min-snr-gamma", v["gamma"], "--channels", v["channels"],
        *([] if tiny else ["--augment"]),
        "--batch", "256" if not tiny else "8", "--lr", "1e-3", "--warmup", "200" if not tiny else "2",
        "--steps", steps(40000), "--max-seconds", str(args.unet_seconds), "--checkpoint-every", "2000",
        "--seed", "3"] + dev, W, threads)


def export(args, W, OUT, clip_dir, aes, variants, order, summary):
    import common

    # 6. Archives: f16 folders, best UNet first; at most 8 files in OUT.
    h = os.path.join(W, "half")
    sizes = {}
    try:
        half_copy("clip", clip_dir, os.path.join(h, "clip"))
        sizes["clip.tar.gz"] = archive(os.path.join(OUT, "clip.tar.gz"), [("clip", os.path.join(h, "clip"))])
    except Exception as e:  # noqa: BLE001 - reported, the rest still comes back
        summary["export_error_clip"] = repr(e)
    members = []
    for lc, d in aes.items():
        try:
            half_copy("ae", d, os.path.join(h, f"ae{lc}"))
            members.append((f"ae{lc}", os.path.join(h, f"ae{lc}")))
        except Exception as e:  # noqa: BLE001
            summary[f"export_error_ae{lc}"] = repr(e)
    sizes["ae.tar.gz"] = archive(os.path.join(OUT, "ae.tar.gz"), members)
    # Best first, then the variants that finished without a probe: at most 4 UNet archives.
    done = [n for n in variants if os.path.exists(os.path.join(W, "models", f"unet-{n}", "unet"))]
    for name in (order + [n for n in done if n not in order])[:4]:
        run = os.path.join(W, "models", f"unet-{name}")
        if not os.path.exists(os.path.join(run, "unet")):
            continue
        try:
            half_copy("unet", os.path.join(run, "unet"), os.path.join(h, f"unet-{name}", "unet"))
            shutil.copytree(os.path.join(run, "scheduler"), os.path.join(h, f"unet-{name}", "scheduler"))
            sizes[f"unet-{name}.tar.gz"] = archive(os.path.join(OUT, f"unet-{name}.tar.gz"),
                                                   [(f"unet-{name}", os.path.join(h, f"unet-{name}"))])
        except Exception as e:  # noqa: BLE001
            summary[f"export_error_{name}"] = repr(e)
    summary["archives"] = sizes
    summary["seconds"] = round(time.time() - T0, 1)
    common.write_json(os.path.join(W, "summary.json"), summary)
    meta = [("summary.json", os.path.join(W, "summary.json")), ("logs", os.path.join(W, "logs"))]
    meta += [(f"gate-{n}", os.path.join(W, f"gate-{n}")) for n in ["clip.json"] + [f"ae{lc}.json" for lc in aes]]
    for sub in ["clip", *[f"ae{lc}" for lc in aes], *[f"unet-{n}" for n in variants]]:
        for f in ("log.jsonl", "done.json", "phases.json"):
            meta.append((f"{sub}/{f}", os.path.join(W, sub, f)))
    meta += [(f"probe-{n}", os.path.join(W, f"probe-{n}")) for n in variants]
    archive(os.path.join(OUT, "meta.tar.gz"), meta)
    say(f"done: {json.dumps(sizes)}")


if __name__ == "__main__":
    main()
