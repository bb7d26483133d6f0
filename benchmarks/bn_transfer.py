"""Why a BatchNorm network trained on generated digits fails on real ones: measure, per generator and sampler setting.

For each model directory and sampler variant, plain class-conditional sampling makes an IPC set per synthesis
seed; the script reports the set's low-level pixel statistics next to a random real subset's (share of exactly
black pixels, background level, stroke level) and the test accuracy of the instance-norm ConvNet-3 (cpu-small)
and of the same ConvNet with BatchNorm (cpu-bn-convnet) trained on it.

    OMP_NUM_THREADS=1 python benchmarks/bn_transfer.py --models src/dsco/assets/mnist5k runs/gen-a/snapshots/step-009000 \
        --out benchmarks/results/mnist5k/bn_transfer.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from dsco.bench import machine
from dsco.data import ImageSet, load_dataset
from dsco.evaluate import evaluate_set, protocol_named
from dsco.fsio import atomic_write_json
from dsco.generator_metrics import pixel_stats, sample_set
from dsco.models.pixel import PixelBackend

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from generator_curve import random_real_set  # noqa: E402  (the same random line in both benchmarks)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--seeds", type=int, default=2, help="synthesis seeds per cell")
    p.add_argument("--runs", type=int, default=2, help="classifier seeds per set")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--protocols", default="cpu-small,cpu-bn-convnet")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    protocols = a.protocols.split(",")
    rows: list[dict] = []

    def record(name: str, sets: list[ImageSet]) -> None:
        row: dict = {"set": name, "stats": pixel_stats(torch.cat([s.images for s in sets]))}
        for proto in protocols:
            accs = [acc for s in sets for acc in evaluate_set(s, test, protocol_named(proto), runs=a.runs, progress=False)["accs"]]
            row[proto] = {"mean": round(100 * statistics.fmean(accs), 2), "std": round(100 * statistics.stdev(accs), 2), "accs": accs}
        rows.append(row)
        print(name, row["stats"], {k: row[k]["mean"] for k in protocols}, flush=True)
        atomic_write_json(a.out, {"benchmark": "bn_transfer", "ipc": a.ipc, "seeds": a.seeds, "runs": a.runs,
                                  "guidance": a.guidance, "machine": machine(), "command": " ".join(["python", *sys.argv]),
                                  "test_stats": pixel_stats(test.images), "rows": rows})

    record("random real", [random_real_set(train, a.ipc, seed) for seed in range(a.seeds)])
    for model in a.models:
        backend = PixelBackend.load(model, num_steps=50, guidance=a.guidance)
        record(str(Path(model)), [sample_set(backend, a.ipc, seed, train.class_names) for seed in range(a.seeds)])


if __name__ == "__main__":
    main()
