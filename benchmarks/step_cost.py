"""What one NOpt step costs next to one sampling step, at DiT-XL/2 size (random weights), on any device.

The synthesis-cost ratio NOpt/plain depends on how expensive the diffusion model is next to the
feature net phi. On the shipped 1M-parameter pixel model the model step is as cheap as phi, so
NOpt multiplies the cost (benchmarks/results/nopt_cost*.json); on the paper's setting (DiT-XL/2,
675M parameters, guidance doubling the batch) it is the other way round. A full DiT-XL/2 run does
not fit a CPU's time, but a handful of steps does, and the ratio follows from per-step times:

    cost ratio = 1 + steps_optimised / steps * (t_targets + J * t_iteration) / t_model_step

t_model_step: one guided `mean_sigma` call on IPC latents; t_targets: the step's real latents noised
(stratified over K draws, as NOpt does) and their features under phi (max_targets x K of them); t_iteration: one loss + backward + optimiser step on IPC latents.
The VAE decode (the same for both) is left out and the last step (no noise, never optimised) is
counted as optimised, so the ratios are upper bounds.

    python benchmarks/step_cost.py --ipc 10 --out benchmarks/results/step_cost_dit_cpu.json
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import math
import sys
import time
from typing import Callable, TypeVar

import torch

from dsco.bench import machine
from dsco.orchestrate import nopt_preset
from dsco.features import RandomFeatureNet
from dsco.fsio import atomic_write_json
from dsco.models.latent import LatentBackend, alphas_cumprod_from
from dsco.nopt import (GraphedIterations, _iterate, class_target_loss, feature_batch, make_optimizer, noised_targets,
                       target_generator)

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from gpu_throughput import device_name, parse_and_build, sync  # noqa: E402  (the same DiT-XL/2 and VAE shapes)

T = TypeVar("T")


def timed(fn: Callable[[], T], repeats: int, device: torch.device) -> tuple[float, T]:
    """Seconds per call after one warm-up call, and the last call's result."""
    out = fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats, out


def preset_costs(backend: LatentBackend, preset: str, ipc: int, targets: int, repeats: int, classes: int) -> dict:
    """Per-step seconds of one class's target features and of one iteration of `classes` classes under a NOpt
    preset: eagerly, and replayed from a CUDA graph (the reference's SGD; on a GPU)."""
    cfg = nopt_preset(preset)
    dev, shape = backend.device, backend.sample_shape
    g = torch.Generator().manual_seed(0)
    tg = target_generator(g, dev)
    z0 = torch.randn((min(targets, cfg.max_targets or targets), *shape), generator=g).to(dev)
    nets = [RandomFeatureNet(shape[0], cfg.feature_width, seed=1 + c).to(dev) for c in range(classes)]
    t = backend.timesteps[len(backend.timesteps) // 2]
    # as NOpt does at a step: the real targets noised afresh (stratified over K draws), then their features
    t_targets, feats = timed(lambda: nets[0].batched(noised_targets(backend, z0, t, ipc, cfg.k_noises, tg), feature_batch(dev)), 1, dev)
    loss = class_target_loss(nets, [feats] * classes, ipc, cfg)
    n_targets = len(z0) * cfg.k_noises
    mu = torch.randn((classes * ipc, *shape), generator=g).to(dev)
    sigma = torch.full((), 0.1, device=dev)
    eps = torch.randn((classes * ipc, *shape), generator=g).to(dev).requires_grad_(True)
    opt = make_optimizer(eps, cfg.optimizer, cfg.lr, cfg.momentum)

    def iteration() -> None:
        losses = loss(mu + sigma * eps, eps)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()

    t_iter, _ = timed(iteration, repeats, dev)
    row = {"preset": preset, "classes": classes, "iterations": cfg.iterations, "feature_width": cfg.feature_width,
           "targets_per_step": n_targets, "seconds_targets_per_class": round(t_targets, 4),
           "seconds_iteration": round(t_iter, 4), "steps_optimised": cfg.optimised_steps(len(backend.timesteps))}
    if dev.type == "cuda" and cfg.optimizer == "sgd":
        runner = GraphedIterations(loss, mu, sigma, eps.detach(), cfg.momentum, capture=True)
        t_graph, _ = timed(lambda: runner.run(loss, mu, sigma, eps.detach(), cfg.lr, 20), repeats, dev)
        row["seconds_iteration_graphed"] = round(t_graph / 20, 5)
        row["graph_captured"] = runner.graph is not None
        graphed, _ = runner.run(loss, mu, sigma, eps.detach(), cfg.lr, 20)
        eager, _, _ = _iterate(loss, mu, sigma, eps.detach(), replace(cfg, iterations=20), cfg.lr)
        row["graphed_vs_eager_max_abs_diff"] = float((graphed - eager).abs().max())  # the same 20 iterations
    best = min(row["seconds_iteration"], row.get("seconds_iteration_graphed", math.inf))
    row["seconds_nopt_per_step_per_class"] = round(t_targets + cfg.iterations * best / classes, 4)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--presets", default="short,reference")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--classes", default="1", help="classes per iteration, a list (NOpt's --class-batch)")
    p.add_argument("--bf16", action="store_true", help="the model step under bf16 autocast")
    a, dit, vae = parse_and_build(p, argv)
    backend = LatentBackend(dit, vae, alphas_cumprod_from({}), num_steps=50, guidance=4.0, bf16=a.bf16, device=a.device)
    dev, steps = backend.device, len(backend.timesteps)
    x = torch.randn((a.ipc, *backend.sample_shape)).to(dev)
    y = torch.zeros(a.ipc, dtype=torch.long, device=dev)
    t = backend.timesteps[steps // 2]
    with torch.no_grad():
        t_model, _ = timed(lambda: backend.mean_sigma(x, t, y), a.repeats, dev)
    print(f"model step (guided, IPC {a.ipc}): {t_model:.3f} s", flush=True)
    rows = []
    for preset in a.presets.split(","):
        for classes in [int(c) for c in a.classes.split(",")]:
            r = preset_costs(backend, preset, a.ipc, a.targets, a.repeats, classes)
            r["cost_vs_plain_one_class"] = round(1 + r["steps_optimised"] / steps * r["seconds_nopt_per_step_per_class"] / t_model, 3)
            print(f"{preset} x{classes}: targets {r['seconds_targets_per_class']} s a class, iteration {r['seconds_iteration']} s, "
                  f"graphed {r.get('seconds_iteration_graphed')} s", flush=True)
            rows.append(r)
    atomic_write_json(a.out, {
        "benchmark": "step_cost", "model": "tiny" if a.tiny else "DiT-XL/2 256x256 (random weights), guidance 4.0",
        "bf16": a.bf16,
        "device": device_name(dev), "machine": machine(),
        "command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "ipc": a.ipc, "steps": steps,
        "seconds_model_step": round(t_model, 4), "rows": rows,
    })


if __name__ == "__main__":
    main()
