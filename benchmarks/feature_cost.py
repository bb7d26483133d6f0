"""NOpt's feature-net costs on a GPU for each choice of arithmetic: the real targets' noising and features (1,300
latents x K = 5 a class a step at ImageNet size) and one iteration of C classes (their samples through their nets,
forward and backward, and the SGD update) from a CUDA graph, in fp32 (TF32 convolutions) or bf16 (autocast,
channels-last targets), with cuDNN's heuristic or benchmarked choice of algorithm; and how far bf16 moves the pivots
the samples are matched to (in units of the features' std, the scale the loss standardises them to).

    python benchmarks/feature_cost.py --device cuda --compile --out benchmarks/results/feature_cost_h200.json
    python benchmarks/feature_cost.py --device cpu --width 16 --targets 40 --out /tmp/fc.json   # a CPU smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from dsco.bench import machine
from dsco.features import RandomFeatureNet, batched_features
from dsco.fsio import atomic_write_json
from dsco.models.diffusion import RespacedSchedule
from dsco.models.latent import alphas_cumprod_from, dit_timesteps
from dsco.nopt import GraphedIterations, NOptConfig, class_target_loss, noised_targets, pivots, target_generator


class _Schedule:  # what noised_targets needs of a backend
    def __init__(self) -> None:
        self.schedule = RespacedSchedule(alphas_cumprod_from({}), dit_timesteps(1000, 50))

    def q_sample(self, z0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        return self.schedule.q_sample(z0, t, noise)


def timed(fn, repeats: int, dev: torch.device) -> float:
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / repeats


def features(net: RandomFeatureNet, z: torch.Tensor, bf16: bool, compiled=None) -> torch.Tensor:
    """The targets' features as NOpt computes them, or under bf16 autocast with channels-last input; through
    `compiled` (torch.compile of the net) when given."""
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=bf16):
        x = z.contiguous(memory_format=torch.channels_last) if bf16 else z
        return batched_features(compiled if compiled is not None else net, x, 4096)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--targets", type=int, default=1300)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--classes", default="1,10")
    p.add_argument("--compile", action="store_true", help="the default arithmetic, then the same through torch.compile "
                   "(targets' net, the iteration's loss) in fp32 and bf16, instead of the cuDNN variants")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    cfg = NOptConfig(feature_width=a.width)
    shape = (4, 32, 32)
    g = torch.Generator().manual_seed(0)
    sched = _Schedule()
    t = sched.schedule.timesteps[25]
    z0 = torch.randn((a.targets, *shape), generator=g).to(dev)
    classes = [int(c) for c in a.classes.split(",")]
    nets = [RandomFeatureNet(4, a.width, seed=1 + c).to(dev) for c in range(max(classes))]
    noise_gen = target_generator(g, dev)
    zt = noised_targets(sched, z0, t, a.ipc, cfg.k_noises, noise_gen)
    rows: list[dict] = []
    out: dict = {"benchmark": "feature_cost", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                 "machine": machine(), "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
                 "feature_width": a.width, "targets_per_step": len(zt), "ipc": a.ipc, "rows": rows}
    out["seconds_target_noise"] = round(timed(lambda: noised_targets(sched, z0, t, a.ipc, cfg.k_noises, noise_gen), 3, dev), 4)
    f32 = nets[0].batched(zt, 4096)
    f16 = features(nets[0], zt, True)
    std = f32.std(0, correction=0)
    piv32 = pivots((f32 - f32.mean(0)) / std, a.ipc)
    piv16 = pivots((f16 - f16.mean(0)) / f16.std(0, correction=0), a.ipc)
    out["bf16_pivot_shift_max"] = float((piv16 - piv32).abs().max())  # pivots are in std units
    out["bf16_pivot_shift_mean"] = float((piv16 - piv32).abs().mean())
    print(f"target noise {out['seconds_target_noise']} s; bf16 pivot shift max {out['bf16_pivot_shift_max']:.4f} "
          f"mean {out['bf16_pivot_shift_mean']:.5f} std", flush=True)
    atomic_write_json(a.out, out)
    variants = [(bench, bf16, False) for bench in (False, True) for bf16 in (False, True)]
    if a.compile:
        variants = [(False, False, False), (False, False, True), (False, True, True)]
    for bench, bf16, comp in variants:
        torch.backends.cudnn.benchmark = bench
        row = {"cudnn_benchmark": bench, "bf16": bf16, "compile": comp}
        try:
            compiled = torch.compile(nets[0]) if comp else None
            if comp:
                row["max_abs_diff_compiled_features"] = float((features(nets[0], zt, bf16, compiled) - (f16 if bf16 else f32)).abs().max())
            row["seconds_target_features"] = round(timed(lambda: features(nets[0], zt, bf16, compiled), 3, dev), 4)
            for c in classes:
                loss = class_target_loss(nets[:c], [f32] * c, a.ipc, cfg)
                mu = torch.randn((c * a.ipc, *shape), generator=g).to(dev)
                sigma = torch.full((), 0.1, device=dev)
                eps = torch.randn((c * a.ipc, *shape), generator=g).to(dev)
                ctx = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)
                with ctx:
                    runner = GraphedIterations(loss, mu, sigma, eps, cfg.momentum, capture=dev.type == "cuda", compile=comp)
                with ctx if runner.graph is None else contextlib.nullcontext():
                    row[f"seconds_iteration_x{c}"] = round(timed(lambda: runner.run(loss, mu, sigma, eps, cfg.lr, 20), 2, dev) / 20, 6)
                row[f"graph_x{c}"] = runner.graph is not None
        except Exception as e:  # a variant this PyTorch or device cannot run: say so, measure the others
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(row, flush=True)
        rows.append(row)
        atomic_write_json(a.out, out)

if __name__ == "__main__":
    main()
