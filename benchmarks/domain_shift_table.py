"""Assemble benchmarks/domain_shift.sh's cells into one JSON and a Markdown table (mean ± std, %, over the 3
training runs of each set; sets named in the cells' names).

    python benchmarks/domain_shift_table.py runs/shift --out benchmarks/results/domain_shift
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cells", help="domain_shift.sh's output folder")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    rows = {}
    for f in sorted(Path(a.cells).glob("*.json")):
        name, _, arch = f.stem.rpartition("-convnet3")
        arch = "convnet3" + arch
        r = json.loads(f.read_text())
        rows.setdefault(name, {})[arch] = {"mean": r["mean"], "std": r["std"], "accs": r["accs"], "images": r.get("images")}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"source": "benchmarks/domain_shift.sh", "cells": rows}, indent=2) + "\n")
    anchors = [rows[k]["convnet3"]["mean"] for k in rows if k.startswith("mnist5k-dsco-anchor-s") and "convnet3" in rows[k]]
    lines = ["| set | ConvNet-3 (%) | BatchNorm ConvNet-3 (%) |", "|---|---|---|"]
    for name, r in rows.items():
        cells = [f"{r[k]['mean'] * 100:.2f} ± {r[k]['std'] * 100:.2f}" if k in r else "" for k in ("convnet3", "convnet3-bn")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    if len(anchors) > 1:
        lines += ["", f"mnist5k DsCo --anchor real over {len(anchors)} synthesis seeds: "
                      f"{statistics.fmean(anchors) * 100:.2f} ± {statistics.stdev(anchors) * 100:.2f} %"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
