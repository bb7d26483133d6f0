"""Assemble benchmarks/domain_shift.sh's cells into one JSON and a Markdown table (mean ± std, %: over the sets'
means where a cell has several synthesis seeds, else over the one set's 3 training runs).

    python benchmarks/domain_shift_table.py runs/shift --out benchmarks/results/domain_shift
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def summarise(runs: list[dict]) -> dict:
    """One cell from its sets: with several sets, the mean and std of the set means (the spread between syntheses,
    as the mnist5k table); with one, the mean and std over its training runs."""
    means = [r["mean"] for r in runs]
    if len(runs) > 1:
        return {"mean": statistics.fmean(means), "std": statistics.stdev(means), "sets": len(runs), "set_means": means}
    return {"mean": runs[0]["mean"], "std": runs[0]["std"], "sets": 1, "accs": runs[0]["accs"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cells", help="domain_shift.sh's output folder")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    sets: dict[str, dict[str, list[dict]]] = {}
    for f in sorted(Path(a.cells).glob("*.json")):
        if "-convnet3" not in f.stem:
            continue
        name, _, arch = f.stem.rpartition("-convnet3")
        arch = "convnet3" + arch
        cell = re.sub(r"-s\d+$", "", name)  # a cell's synthesis seeds: seed 0 unsuffixed on the digits, -s0 on mnist5k
        sets.setdefault(cell, {}).setdefault(arch, []).append(json.loads(f.read_text()))
    rows = {cell: {arch: summarise(runs) for arch, runs in archs.items()} for cell, archs in sets.items()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"source": "benchmarks/domain_shift.sh", "cells": rows}, indent=2) + "\n")
    lines = ["| cell | sets | ConvNet-3 (%) | BatchNorm ConvNet-3 (%) |", "|---|---|---|---|"]
    for name, r in rows.items():
        cells = [f"{r[k]['mean'] * 100:.2f} ± {r[k]['std'] * 100:.2f}" if k in r else "" for k in ("convnet3", "convnet3-bn")]
        lines.append(f"| {name} | {r['convnet3']['sets']} | {cells[0]} | {cells[1]} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
