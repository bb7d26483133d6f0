"""Generator metrics of pixel models on mnist5k: Fréchet distance, precision / recall, density / coverage and class
fidelity of their plain samples against the real test split, in the teacher's feature space (dsco.generator_metrics).

    OMP_NUM_THREADS=1 python benchmarks/generator_report.py --models src/dsco/assets/mnist5k --out benchmarks/results/mnist5k/generator_metrics.json
"""
from __future__ import annotations

import argparse
import sys
import time

from dsco.bench import machine
from dsco.orchestrate import default_teacher_dir
from dsco.data import load_dataset
from dsco.evaluate import TeacherConfig, ensure_teacher
from dsco.fsio import atomic_write_json
from dsco.generator_metrics import generator_metrics
from dsco.models.pixel import PixelBackend

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from generator_curve import FEATURE_NET  # noqa: E402  (the same feature net names the same numbers)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    teacher = ensure_teacher(default_teacher_dir("mnist5k"), train, lambda: test, TeacherConfig(), progress=False)
    rows = []
    for model in a.models:
        t0 = time.time()
        r = generator_metrics(PixelBackend.load(model, 50, a.guidance), test, teacher, FEATURE_NET, a.per_class)
        rows.append({"model": model, "seconds": round(time.time() - t0, 1), **r})
        print(model, {k: round(v, 4) for k, v in r["overall"].items()}, flush=True)
        atomic_write_json(a.out, {"benchmark": "generator_metrics", "guidance": a.guidance, "machine": machine(),
                                  "command": " ".join(["python", *sys.argv]), "models": rows})


if __name__ == "__main__":
    main()
