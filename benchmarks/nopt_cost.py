"""Synthesis cost and quality proxy of plain sampling vs NOpt (reference schedule) vs our default.

Each (variant, IPC) runs in its own process so its peak memory (max RSS) is its own. Time per
image is measured on the first `--classes` classes. The reference schedule is too
slow for a CPU (a 2048-feature net over 5 x all real targets at every step, 200 iterations),
so it optimises only the first `--reference-steps` steps and the full time is extrapolated
(marked `extrapolated`; no final-image quality proxy then). The quality proxy compares the
final images with the clean real class in a held-out random feature space (2048 features,
a seed no run optimises against): the reference's quantile loss and MMD^2.

    python benchmarks/nopt_cost.py --ipc 1,10,50 --out benchmarks/results/nopt_cost.json

Variants: diffusion (plain sampling), and the NOpt presets short (called budget before) and reference, each optionally with
knob overrides: `short+max_targets=100+steps_fraction=1` (the results files made before the presets
fast/quick/lean were retired name them; ablation.md gives their knobs).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, replace

import torch

from dsco.bench import machine
from dsco.orchestrate import default_model_dir, nopt_preset
from dsco.data import load_dataset
from dsco.features import RandomFeatureNet
from dsco.fsio import atomic_write_json
from dsco.mmd import mmd2
from dsco.models.diffusion import plain_sample
from dsco.models.pixel import PixelBackend
from dsco.nopt import NOptConfig, feature_std, nopt_class, pivots, quantile_loss

EVAL_SEED = 12345


def quality(x: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Distribution match of final samples to the clean real class, in a held-out random feature space."""
    phi = RandomFeatureNet(x.shape[1], 256, seed=EVAL_SEED)
    f_real = phi.batched(real)
    m, s = f_real.mean(0), feature_std(f_real)
    fr, fx = (f_real - m) / s, (phi.batched(x) - m) / s
    return {"quantile": quantile_loss(fx, pivots(fr, len(x)), 5e-4).item(), "mmd2": mmd2(fx, fr).item()}


def variant_config(variant: str) -> NOptConfig:
    """`preset+knob=value+...` -> the preset's NOptConfig with those knobs replaced (typed like the preset's)."""
    name, *knobs = variant.split("+")
    cfg = nopt_preset(name)
    kw = {}
    for knob in knobs:
        key, _, value = knob.partition("=")
        if not hasattr(cfg, key):
            raise SystemExit(f"unknown NOpt knob {key!r} in variant {variant!r}")
        kw[key] = value if isinstance(getattr(cfg, key), str) else float(value) if "." in value else int(value)
    return replace(cfg, **kw)


def one(variant: str, ipc: int, classes: int, reference_steps: int, model: str | None) -> dict:
    backend = PixelBackend.load(model or default_model_dir("mnist5k"))
    train = load_dataset("mnist5k", "train")
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = None if variant == "diffusion" else variant_config(variant)
    extrapolated = variant == "reference"
    if extrapolated:
        cfg = replace(cfg, steps_fraction=reference_steps / len(backend.timesteps))
    seconds, q, losses = 0.0, [], []
    for label in range(classes):
        real = backend.encode(train.class_images(label))
        g = torch.Generator().manual_seed(label)
        t0 = time.perf_counter()
        if variant == "diffusion":
            z, recs = plain_sample(backend, label, ipc, g), []
        else:
            z, recs = nopt_class(backend, label, real, ipc, cfg, g, label + 1)
        dt = time.perf_counter() - t0
        if extrapolated:
            plain_t = time.perf_counter()
            plain_sample(backend, label, ipc, torch.Generator().manual_seed(label))
            plain_dt = time.perf_counter() - plain_t
            per_opt_step = (dt - plain_dt * reference_steps / len(backend.timesteps)) / reference_steps
            dt = plain_dt + per_opt_step * (len(backend.timesteps) - 1)
        else:
            q.append(quality(z, real))
        seconds += dt
        losses += [(r.loss_first, r.loss_last) for r in recs]
    out = {
        "variant": variant, "ipc": ipc, "classes_timed": classes, "seconds_per_image": seconds / (classes * ipc),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_loading_mb": rss_loaded,
        "extrapolated": extrapolated, "nopt": None if cfg is None else asdict(cfg),
        "mean_step_loss_first": sum(a for a, _ in losses) / len(losses) if losses else None,
        "mean_step_loss_last": sum(b for _, b in losses) / len(losses) if losses else None,
    }
    if q:
        out["final_quantile"] = sum(d["quantile"] for d in q) / len(q)
        out["final_mmd2"] = sum(d["mmd2"] for d in q) / len(q)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ipc", default="1,10,50")
    p.add_argument("--variants", default="diffusion,short,reference")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--reference-steps", type=int, default=2)
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--one", nargs=2, metavar=("VARIANT", "IPC"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.classes, a.reference_steps, a.model)))
        return
    rows = []
    for ipc in [int(x) for x in a.ipc.split(",")]:
        for v in a.variants.split(","):
            cmd = [sys.executable, __file__, "--one", v, str(ipc), "--classes", str(a.classes),
                   "--reference-steps", str(a.reference_steps)] + (["--model", a.model] if a.model else [])
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    plain = {r["ipc"]: r["seconds_per_image"] for r in rows if r["variant"] == "diffusion"}
    for r in rows:
        r["cost_vs_plain"] = r["seconds_per_image"] / plain[r["ipc"]] if r["ipc"] in plain else None
    result = {"machine": machine(), "command": " ".join(["python", *sys.argv]), "rows": rows}
    if a.out:
        atomic_write_json(a.out, result)


if __name__ == "__main__":
    main()
