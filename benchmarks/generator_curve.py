"""NOpt's gain against generator quality: plain sampling vs DsCo at one IPC, for checkpoints along a training.

For each model directory (weak to strong): the generator metrics (Fréchet distance, precision / recall,
density / coverage and class fidelity in the teacher's feature space, against the real test split), then
per synthesis seed a plain-sampling set and a DsCo set (the dataset's default NOpt schedule), each trained
`--runs` times with ConvNet-3 (cpu-small) and once with its BatchNorm variant (cpu-bn-convnet); random real
subsets of the same size are the reference line. Every set and result is cached under --work, so an
interrupted run resumes; the JSON is rewritten after every model, and the plot at the end.

    OMP_NUM_THREADS=1 python benchmarks/generator_curve.py --models runs/gen-a/snapshots/step-00{0500,1000,2000,4000,9000} \
        --out benchmarks/results/mnist5k/generator_curve.json --plot benchmarks/results/mnist5k/generator_curve.png
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from dsco.methods.selection import random_subset
from dsco.bench import machine
from dsco.orchestrate import ConcentrateConfig, concentrate, default_teacher_dir
from dsco.data import ImageSet, load_dataset
from dsco.evaluate import TeacherConfig, ensure_teacher, evaluate_set, protocol_named
from dsco.fsio import atomic_write_json
from dsco.generator_metrics import generator_metrics, pixel_stats
from dsco.models.pixel import PixelBackend
from dsco.outputset import load_output_set

FEATURE_NET = "teacher: ConvNet-3 (width 32, instance norm) trained on the mnist5k train split, penultimate features"


def cached_json(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    atomic_write_json(path, result)
    return result


def accs(train: ImageSet, test: ImageSet, protocol: str, runs: int) -> list[float]:
    return evaluate_set(train, test, protocol_named(protocol), runs=runs, progress=False)["accs"]


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def model_row(model: str, a: argparse.Namespace, train: ImageSet, test: ImageSet, teacher: torch.nn.Module) -> dict:
    work = Path(a.work) / "-".join(Path(model).parts[-3:])
    meta = json.loads((Path(model) / "config.json").read_text())
    backend = PixelBackend.load(model, num_steps=50, guidance=2.0)
    metrics = cached_json(work / "metrics.json", lambda: generator_metrics(backend, test, teacher, FEATURE_NET, a.per_class))
    row = {"model": model, "train_steps": meta.get("steps_done"), "block_out_channels": meta["model"]["block_out_channels"],
           "metrics": metrics, "methods": {}}
    for method in ("diffusion", "dsco"):
        per_set = []
        for seed in range(a.seeds):
            out = work / f"{method}-ipc{a.ipc}-s{seed}"

            def evaluate() -> dict:
                path = concentrate(ConcentrateConfig(dataset="mnist5k", out=str(out), method=method, ipc=a.ipc, seed=seed,
                                                     model=model).resolved(), resume=True, train=train, progress=False)
                s = load_output_set(path)
                return {"convnet3": accs(s, test, "cpu-small", a.runs), "bn_convnet3": accs(s, test, "cpu-bn-convnet", a.bn_runs)}

            per_set.append(cached_json(work / f"{method}-ipc{a.ipc}-s{seed}.json", evaluate))
        images = torch.cat([load_output_set(work / f"{method}-ipc{a.ipc}-s{seed}").images for seed in range(a.seeds)])
        row["methods"][method] = {
            "sets": per_set,
            "pixel_stats": pixel_stats(images),
            "convnet3": summary([statistics.fmean(s["convnet3"]) for s in per_set]),
            "bn_convnet3": summary([statistics.fmean(s["bn_convnet3"]) for s in per_set]),
        }
    print(model, {m: round(100 * v["convnet3"]["mean"], 2) for m, v in row["methods"].items()},
          "fd", round(metrics["overall"]["fd"], 2), "coverage", round(metrics["overall"]["coverage"], 3), flush=True)
    return row


def random_real_set(train: ImageSet, ipc: int, seed: int) -> ImageSet:
    """`ipc` real images of each class drawn at random: the line a synthetic set of that size must beat."""
    g = torch.Generator().manual_seed(seed)
    idx = [train.indices_of(c) for c in range(train.num_classes)]
    return train.subset(torch.cat([i[random_subset(i, ipc, g)] for i in idx]))


def random_row(a: argparse.Namespace, train: ImageSet, test: ImageSet) -> dict:
    def compute() -> dict:
        sets = []
        for seed in range(a.seeds):
            s = random_real_set(train, a.ipc, seed)
            sets.append({"convnet3": accs(s, test, "cpu-small", a.runs), "bn_convnet3": accs(s, test, "cpu-bn-convnet", a.bn_runs)})
        return {"sets": sets, "convnet3": summary([statistics.fmean(s["convnet3"]) for s in sets]),
                "bn_convnet3": summary([statistics.fmean(s["bn_convnet3"]) for s in sets])}

    return cached_json(Path(a.work) / f"random-ipc{a.ipc}.json", compute)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = result["models"]
    rand = result["random_real"]["convnet3"]
    for ax, key, label in ((axes[0], "fd", "Fréchet distance to the real test split (teacher features; lower is better)"),
                           (axes[1], "coverage", "coverage (higher is better)")):
        x = [r["metrics"]["overall"][key] for r in rows]
        for method, name in (("diffusion", "plain sampling"), ("dsco", "DsCo (NOpt)")):
            y = [100 * r["methods"][method]["convnet3"]["mean"] for r in rows]
            e = [100 * r["methods"][method]["convnet3"]["std"] for r in rows]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=f"{name}, ConvNet-3")
            bn = [100 * r["methods"][method]["bn_convnet3"]["mean"] for r in rows]
            ax.plot(x, bn, marker="x", ls=":", label=f"{name}, BatchNorm ConvNet-3")
        for r, xi in zip(rows, x):
            ax.annotate(f"{r['train_steps']}", (xi, 100 * r["methods"]["dsco"]["convnet3"]["mean"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 5))
        ax.axhline(100 * rand["mean"], color="grey", ls="--", label=f"{result['ipc']} random real per class")
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel(f"ConvNet-3 top-1 (%), IPC {result['ipc']}")
        if key == "fd":
            ax.set_xscale("log")
            ax.invert_xaxis()
        ax.legend(fontsize=7)
    fig.suptitle("NOpt's gain against generator quality (mnist5k; labels: training steps)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, help="pixel model directories, weak to strong")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3, help="synthesis seeds per method and model")
    p.add_argument("--runs", type=int, default=3, help="ConvNet-3 trainings per set")
    p.add_argument("--bn-runs", type=int, default=1, help="BatchNorm ConvNet-3 trainings per set")
    p.add_argument("--per-class", type=int, default=100, help="samples per class for the generator metrics")
    p.add_argument("--work", default="runs/generator-curve")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", default=None)
    a = p.parse_args(argv)
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    teacher = ensure_teacher(default_teacher_dir("mnist5k"), train, lambda: test, TeacherConfig(), progress=False)
    result = {"benchmark": "generator_curve", "ipc": a.ipc, "seeds": a.seeds, "runs": a.runs, "bn_runs": a.bn_runs,
              "feature_net": FEATURE_NET, "test_pixel_stats": pixel_stats(test.images), "machine": machine(), "command": " ".join(["python", *sys.argv]),
              "random_real": random_row(a, train, test), "models": []}
    for model in a.models:
        result["models"].append(model_row(model, a, train, test, teacher))
        atomic_write_json(a.out, result)
    if a.plot:
        plot(result, a.plot)


if __name__ == "__main__":
    main()
