"""Throughput and peak GPU memory of a DiT-XL/2-sized model at 256x256: plain sampling vs NOpt, bf16 vs fp32, classes
batched or one at a time, and every method of the registry.

Random weights (speed does not depend on them): DiT-XL/2 (28 layers, width 1152, 16 heads, patch 2,
1000 classes, learned sigma) and the SD VAE architecture (4 levels 128-256-512-512). Each cell
synthesises `--classes` classes at an IPC, `--class-batch` of them at a time (NOpt's and plain sampling's
batched path, `dsco concentrate --class-batch`), with guidance 4.0 and 50 steps, VAE decode included, after an
untimed warm-up group, and reports images per second and peak allocated GPU memory. `plain` is the ancestral
sampler NOpt steers (the `diffusion` method); `ddim` diffusers' DDIM. NOpt runs on random "real" latents
(`--targets` per class), with the reference schedule (J = 200, 2048 features, K = 5) or the short preset
(the mnist5k default); a `+nograph` suffix iterates without CUDA graphs. Each NOpt cell's `ratio_to_plain` divides by the plain cell of the same dtype, IPC
and class batch; each plain cell's `share_of_peak` is its model FLOPs per second (counted by PyTorch's
FlopCounterMode on this model: 2 FLOPs a multiply-add) over the device's dense bf16 peak.
Any other name in `--methods` is a method of the registry (diffusion, dsco, d4m, d3hr, mgd3, igd, minimax, ...)
run through its `synthesise` exactly as `dsco concentrate` runs it, with its default knobs, on the same random
latents (and, for a method that trains on the pixels, `--train-images` random images per class); its cell
also records each class's seconds, so one-off work (Minimax's fine-tuning, IGD's surrogate) is read apart
from the per-class cost.

    python benchmarks/gpu_throughput.py --out benchmarks/results/gpu_throughput.json
    python benchmarks/gpu_throughput.py --tiny --device cpu --out /tmp/smoke.json   # a CPU smoke run
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, replace
from typing import Optional

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

from dsco.bench import machine
from dsco.orchestrate import ConcentrateConfig, nopt_preset
from dsco.data import ImageSet
from dsco.methods import ClassTask, method_named
from dsco.fsio import atomic_write_json
from dsco.models.latent import LatentBackend, alphas_cumprod_from
from dsco.models.diffusion import plain_samples
from dsco.nopt import NOptConfig, nopt_classes


def build(tiny: bool) -> tuple[DiTTransformer2DModel, AutoencoderKL]:
    if tiny:
        dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
        vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
        return dit, vae
    dit = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=256)
    return dit, vae


def parse_and_build(p: argparse.ArgumentParser, argv: list[str] | None):
    """The options shared by the DiT-XL/2-sized benchmarks (this one and step_cost.py), parsed, and the models."""
    p.add_argument("--targets", type=int, default=1300, help="random real latents per class (ImageNet has ~1300)")
    p.add_argument("--device", default=None)
    p.add_argument("--tiny", action="store_true", help="a tiny model, to check the script on a CPU")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    return (a, *build(a.tiny))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def ddim(backend: LatentBackend, label: int, n: int, steps: int, g: torch.Generator) -> torch.Tensor:
    """Plain DDIM (eta 0) with classifier-free guidance, using diffusers' scheduler."""
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    sched.set_timesteps(steps)
    x = torch.randn((n, *backend.sample_shape), generator=g).to(backend.device)
    y = torch.full((n,), label, device=backend.device)
    for t in sched.timesteps:
        eps, _ = backend.model_output(x, int(t), y)
        x = sched.step(eps, t, x).prev_sample
    return backend.decode(x)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev: torch.device) -> float | None:
    """Peak allocated GPU memory since `reset_peak`, in GiB (None on a CPU)."""
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None


# NVIDIA's dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by device name (first match)
DENSE_BF16_PEAK = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200", 989.4e12), ("H100", 989.4e12), ("A100", 312e12))


def dense_bf16_peak(name: str) -> Optional[float]:
    return next((peak for key, peak in DENSE_BF16_PEAK if key in name), None)


def model_flops(backend: LatentBackend) -> dict:
    """FLOPs of one guided model call and one VAE decode, per image, as PyTorch counts them (2 a multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn((1, *backend.sample_shape), device=backend.device)
    y = torch.zeros(1, dtype=torch.long, device=backend.device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            backend.model_output(x, backend.timesteps[0], y)
        guided = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            backend.decode(x)
        decode = fc.get_total_flops()
    steps = len(backend.timesteps)
    return {"guided_call_per_image": guided, "decode_per_image": decode, "steps": steps,
            "sampling_per_image": guided * steps, "per_image": guided * steps + decode}


def matmul_tflops(device: torch.device) -> Optional[float]:
    """What an 8192^3 bf16 matrix product reaches here (TFLOP/s): the device's practical peak."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    sync(device)
    return round(10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12, 1)


def synthesise_group(backend: LatentBackend, method: str, labels: list[int], ipc: int, targets: int,
                     nopt: Optional[NOptConfig], graphs: Optional[bool]) -> None:
    """One batch of classes, decoded, as concentrate makes them."""
    gens = [torch.Generator().manual_seed(label) for label in labels]
    if method == "ddim":
        zs = [ddim(backend, label, ipc, len(backend.timesteps), g) for label, g in zip(labels, gens)]
        return
    if method == "plain":
        zs = plain_samples(backend, labels, ipc, gens)
    else:
        real = [torch.randn((targets, *backend.sample_shape), generator=torch.Generator().manual_seed(1000 + label)) for label in labels]
        zs = [z for z, _ in nopt_classes(backend, labels, real, ipc, nopt, gens, [label + 1 for label in labels], graphs=graphs)]
    for z in zs:
        backend.decode(z)


def cell(backend: LatentBackend, method: str, ipc: int, classes: int, class_batch: int, targets: int,
         nopt: Optional[NOptConfig], graphs: Optional[bool] = None) -> dict:
    dev = backend.device
    warm = replace(nopt, iterations=min(nopt.iterations, 2), max_targets=50) if nopt else None
    synthesise_group(backend, method, list(range(900, 900 + class_batch)), ipc, targets, warm, graphs)  # warm-up, untimed
    reset_peak(dev)
    sync(dev)
    t0 = time.perf_counter()
    for start in range(0, classes, class_batch):
        synthesise_group(backend, method, list(range(start, min(classes, start + class_batch))), ipc, targets, nopt, graphs)
    sync(dev)
    seconds = time.perf_counter() - t0
    return {"method": method, "ipc": ipc, "classes": classes, "class_batch": class_batch, "seconds": round(seconds, 2),
            "images_per_second": round(ipc * classes / seconds, 4), "peak_gpu_gib": peak_gib(dev),
            "nopt": asdict(nopt) if nopt else None}


def registry_cell(backend: LatentBackend, method: str, ipc: int, classes: int, class_batch: int, targets: int,
                  train_images: int, d3hr_candidates: int) -> dict:
    """One method of the registry on `classes` classes, as concentrate runs it (fresh caches, so nothing is
    reused; `class_batch` classes together where the method batches them): seconds per batch and overall."""
    dev = backend.device
    reset_peak(dev)

    def latents(c: int) -> torch.Tensor:
        return torch.randn((targets, *backend.sample_shape), generator=torch.Generator().manual_seed(c))

    g = torch.Generator().manual_seed(0)
    train = ImageSet(torch.rand((classes * train_images, *backend.image_shape), generator=g),
                     torch.arange(classes).repeat_interleave(train_images), [str(c) for c in range(classes)], "random")
    shared: dict = {}
    runner = method_named(method)
    batch = class_batch if runner.batches_classes else 1
    per_batch = []
    with tempfile.TemporaryDirectory(prefix="dsco-throughput-") as cache:  # a fine-tuned DiT-XL/2 is 2.7 GB
        cfg = ConcentrateConfig(method=method, ipc=ipc, schedule="reference", out=cache).resolved()
        cfg.d3hr.cache = cfg.minimax.cache = cache
        cfg.d3hr.candidates = d3hr_candidates
        tasks = [ClassTask(cfg=cfg, label=label, name=str(label), n=ipc, generator=torch.Generator().manual_seed(label),
                           class_seed=label, backend=backend, model_label=label,
                           real_images=lambda c=label: train.class_images(c), real_indices=lambda c=label: train.indices_of(c),
                           real_targets=lambda c=label: latents(c), train=lambda: train, targets_of=latents,
                           num_classes=classes, model_labels=list(range(classes)), shared=shared)
                 for label in range(classes)]
        sync(dev)
        t0 = time.perf_counter()
        for start in range(0, classes, batch):
            t1 = time.perf_counter()
            runner.synthesise_classes(tasks[start : start + batch])
            sync(dev)
            per_batch.append(round(time.perf_counter() - t1, 2))
        seconds = time.perf_counter() - t0
    return {"method": method, "ipc": ipc, "classes": classes, "class_batch": batch, "seconds": round(seconds, 2),
            "batch_seconds": per_batch, "d3hr_candidates": cfg.d3hr.candidates if method == "d3hr" else None,
            "images_per_second": round(ipc * classes / seconds, 4), "peak_gpu_gib": peak_gib(dev)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", default="10,50")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--methods", default="plain,nopt-short,nopt-reference")
    p.add_argument("--classes", type=int, default=1, help="classes per cell (at least the class batch)")
    p.add_argument("--class-batch", default="1", help="classes sampled together, a list (IPC 10 and 50 may differ: "
                   "'10:10,50:4' = 10 at IPC 10, 4 at IPC 50)")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    p.add_argument("--d3hr-candidates", type=int, default=10**6, help="D3HR's candidate groups a class (the original's "
                   "10^8 take minutes a class; the search's time grows linearly with them)")
    p.add_argument("--train-images", type=int, default=50, help="random train images per class, for methods that train on pixels (IGD)")
    a, dit, vae = parse_and_build(p, argv)
    results: list[dict] = []
    meta: dict = {}

    def write(dev: torch.device) -> None:  # after every cell, so a run stopped by a time limit keeps what it measured
        atomic_write_json(a.out, {
            "benchmark": "gpu_throughput", "model": "tiny" if a.tiny else "DiT-XL/2 256x256 + SD-VAE (random weights)",
            "device": device_name(dev), "machine": machine(), "compile": a.compile,
            "command": " ".join(["python", *sys.argv]), "torch": torch.__version__, **meta, "results": results,
        })

    def batches(ipc: int) -> list[int]:
        out = []
        for part in a.class_batch.split(","):
            at, _, b = part.rpartition(":")
            if not at or int(at) == ipc:
                out.append(int(b))
        return out or [1]

    for dtype in a.dtypes.split(","):
        backend = LatentBackend(dit, vae, alphas_cumprod_from({}), num_steps=50, guidance=4.0, bf16=dtype == "bf16", device=a.device,
                                compile=a.compile)
        if "flops" not in meta:
            meta["flops"] = model_flops(backend)
            meta["dense_bf16_peak_tflops"] = (dense_bf16_peak(device_name(backend.device)) or 0) / 1e12 or None
            meta["matmul_bf16_tflops"] = matmul_tflops(backend.device)
            print(f"FLOPs per image {meta['flops']}, peak {meta['dense_bf16_peak_tflops']}, matmul {meta['matmul_bf16_tflops']} TFLOP/s", flush=True)
        for ipc in [int(x) for x in a.ipc.split(",")]:
            for class_batch in batches(ipc):
                plain = None
                for method in a.methods.split(","):
                    name, *flags = method.split("+")
                    classes = max(a.classes, class_batch)
                    if name in ("ddim", "plain"):
                        r = cell(backend, name, ipc, classes, class_batch, a.targets, None)
                    elif name.startswith("nopt"):
                        nopt = nopt_preset(name.split("-", 1)[1])
                        if a.tiny:
                            nopt.iterations, nopt.feature_width = min(nopt.iterations, 2), 16
                        r = cell(backend, "nopt", ipc, classes, class_batch, a.targets, nopt, False if "nograph" in flags else None)
                    else:
                        r = registry_cell(backend, name, ipc, classes, class_batch, a.targets, a.train_images, a.d3hr_candidates)
                    r.update({"variant": method, "dtype": dtype})
                    if name == "plain":
                        plain = r
                        peak = meta["dense_bf16_peak_tflops"]
                        flops = r["images_per_second"] * meta["flops"]["sampling_per_image"] / 1e12
                        r["model_tflops_per_second"] = round(flops, 1)
                        r["share_of_peak"] = round(flops / peak, 3) if peak else None
                    elif plain is not None:
                        r["ratio_to_plain"] = round(plain["images_per_second"] / r["images_per_second"], 2)
                    per_class = f", per batch {r['batch_seconds']} s" if "batch_seconds" in r else ""
                    extra = "".join(f", {k} {r[k]}" for k in ("share_of_peak", "ratio_to_plain") if k in r)
                    print(f"{dtype} ipc {ipc} x{class_batch} {method}: {r['images_per_second']} img/s{per_class}{extra}, "
                          f"peak {r['peak_gpu_gib']} GiB", flush=True)
                    results.append(r)
                    write(backend.device)


if __name__ == "__main__":
    main()
