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
import sys
import time
from typing import Callable, TypeVar

import torch

from dsco.bench import machine
from dsco.orchestrate import nopt_preset
from dsco.features import RandomFeatureNet
from dsco.fsio import atomic_write_json
from dsco.models.latent import LatentBackend, alphas_cumprod_from
from dsco.nopt import make_optimizer, noised_targets, target_loss

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


def preset_costs(backend: LatentBackend, preset: str, ipc: int, targets: int, repeats: int) -> dict:
    """Per-step seconds of the target features and of one iteration under a NOpt preset."""
    cfg = nopt_preset(preset)
    dev, shape = backend.device, backend.sample_shape
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn((min(targets, cfg.max_targets or targets), *shape), generator=g).to(dev)
    phi = RandomFeatureNet(shape[0], cfg.feature_width, seed=1).to(dev)
    t = backend.timesteps[len(backend.timesteps) // 2]
    # as NOpt does at a step: the real targets noised afresh (stratified over K draws), then their features
    t_targets, loss_fn = timed(lambda: target_loss(phi, noised_targets(backend, z0, t, ipc, cfg.k_noises, g), ipc, cfg), 1, dev)
    n_targets = len(z0) * cfg.k_noises
    mu = torch.randn((ipc, *shape), generator=g).to(dev)
    sigma = torch.full_like(mu, 0.1)
    eps = torch.randn((ipc, *shape), generator=g).to(dev).requires_grad_(True)
    opt = make_optimizer(eps, cfg.optimizer, cfg.lr, cfg.momentum)

    def iteration() -> None:
        loss = loss_fn(mu + sigma * eps, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_iter, _ = timed(iteration, repeats, dev)
    return {"preset": preset, "iterations": cfg.iterations, "feature_width": cfg.feature_width,
            "targets_per_step": n_targets, "seconds_targets": round(t_targets, 4),
            "seconds_iteration": round(t_iter, 4), "steps_optimised": cfg.optimised_steps(len(backend.timesteps)),
            "seconds_nopt_per_step": round(t_targets + cfg.iterations * t_iter, 4)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--presets", default="budget,reference")
    p.add_argument("--repeats", type=int, default=3)
    a, dit, vae = parse_and_build(p, argv)
    backend = LatentBackend(dit, vae, alphas_cumprod_from({}), num_steps=50, guidance=4.0, device=a.device)
    dev, steps = backend.device, len(backend.timesteps)
    x = torch.randn((a.ipc, *backend.sample_shape)).to(dev)
    y = torch.zeros(a.ipc, dtype=torch.long, device=dev)
    t = backend.timesteps[steps // 2]
    with torch.no_grad():
        t_model, _ = timed(lambda: backend.mean_sigma(x, t, y), a.repeats, dev)
    print(f"model step (guided, IPC {a.ipc}): {t_model:.3f} s", flush=True)
    rows = []
    for preset in a.presets.split(","):
        r = preset_costs(backend, preset, a.ipc, a.targets, a.repeats)
        r["cost_vs_plain"] = round(1 + r["steps_optimised"] / steps * r["seconds_nopt_per_step"] / t_model, 3)
        print(f"{preset}: targets {r['seconds_targets']} s, iteration {r['seconds_iteration']} s, "
              f"cost {r['cost_vs_plain']}x plain", flush=True)
        rows.append(r)
    atomic_write_json(a.out, {
        "benchmark": "step_cost", "model": "tiny" if a.tiny else "DiT-XL/2 256x256 (random weights), guidance 4.0",
        "device": device_name(dev), "machine": machine(),
        "command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "ipc": a.ipc, "steps": steps,
        "seconds_model_step": round(t_model, 4), "rows": rows,
    })


if __name__ == "__main__":
    main()
