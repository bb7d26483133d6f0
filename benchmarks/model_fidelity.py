"""Conditional fidelity of a pixel diffusion model: a ConvNet trained on the real train split
classifies the model's class-conditional samples; the share classified as the asked class.

    python benchmarks/model_fidelity.py --per-class 100 --out benchmarks/results/model_fidelity.json
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from dsco.bench import machine
from dsco.concentrate import default_model_dir
from dsco.data import load_dataset
from dsco.evaluate import EvalProtocol, accuracy, predict_proba, train_classifier
from dsco.fsio import atomic_write_json
from dsco.models.diffusion import plain_sample
from dsco.models.pixel import PixelBackend


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--sampling-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    t0 = time.time()
    judge = train_classifier(train, EvalProtocol(), seed=0)
    judge_acc = accuracy(judge, test)
    backend = PixelBackend.load(a.model or default_model_dir("mnist5k"), a.sampling_steps, a.guidance)
    per_class, t1 = [], time.time()
    for label in range(10):
        x = backend.decode(plain_sample(backend, label, a.per_class, torch.Generator().manual_seed(a.seed * 1000 + label)))
        per_class.append((predict_proba(judge, x).argmax(1) == label).float().mean().item())
    result = {
        "fidelity": sum(per_class) / 10, "per_class": per_class, "judge_test_accuracy": judge_acc,
        "per_class_samples": a.per_class, "sampling_steps": a.sampling_steps, "guidance": a.guidance,
        "sampling_seconds": round(time.time() - t1, 1), "total_seconds": round(time.time() - t0, 1),
        "machine": machine(), "command": " ".join(["python", *sys.argv]),
    }
    print(result)
    if a.out:
        atomic_write_json(a.out, result)


if __name__ == "__main__":
    main()
