"""Seed a bench cache (OUT/cells) with a committed table's cells of the methods whose code did not change, so a
rebuild that changes some methods (issue 20: the peers) recomputes only those.

Each carried cell is written with the configuration the current code records for it (`determining`, protocol,
runs), so the bench refuses it, as it refuses any stale cell, if that method's settings have changed since. A
model-based cell of three synthesis seeds is split back into its per-seed cells (each seed's accuracies and mean;
its seconds are the table's mean over seeds, which leaves the cell's mean cost unchanged). The LRS teacher-label
cells carry their mean only (the only number the label-robust score reads). The generator's metrics are carried with
their own record; the lossless curve is not (its doped rows read their synthetic set's manifest from disk). Every
carried cell says where it came from (`carried_from`).

    python benchmarks/carry_cells.py benchmarks/results/mnist5k/results.json runs/bench --methods dsco,random,...
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict
from pathlib import Path

from dsco.bench import BenchConfig, _Bench
from dsco.orchestrate import determining
from dsco.fsio import atomic_write_json


def made_with(b: _Bench, cc, protocol=None, extra: dict | None = None) -> dict:
    protocol = protocol or b.cfg.protocol
    return json.loads(json.dumps({**determining(cc), **(extra or {}), "protocol": asdict(protocol), "runs": b.cfg.runs}))


def carry(results_path: Path, out: Path, methods: list[str]) -> list[str]:
    r = json.loads(results_path.read_text())
    b = _Bench(BenchConfig(dataset=r["dataset"], out=str(out), runs=r["runs"], synthesis_seeds=r.get("synthesis_seeds", 1)))
    cells = out / "cells"
    source = str(results_path)
    written = []

    def write(key: str, row: dict) -> None:
        atomic_write_json(cells / f"{key}.json", {**row, "carried_from": source})
        written.append(key)

    write("full", {**r["full"], "made_with": json.loads(json.dumps({"dataset": r["dataset"], "protocol": r["protocol"], "runs": r["runs"]}))})
    for c in r["cells"]:
        if c["method"] not in methods:
            continue
        sets = c.get("sets", 1)
        for k in range(sets):
            key, cc = b.grid_set(c["method"], c["ipc"], k)
            accs = c["accs"][k * r["runs"] : (k + 1) * r["runs"]] if sets > 1 else c["accs"]
            write(key, {"method": c["method"], "ipc": c["ipc"], "mean": c["set_means"][k] if sets > 1 else c["mean"],
                        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "accs": accs,
                        "synthesis_seconds": c["synthesis_seconds"], "reused_seconds": c.get("reused_seconds", 0.0),
                        "made_with": made_with(b, cc)})
    for c in r.get("bn", {}).get("cells", []):
        if c["method"] in methods:
            key, cc = b.grid_set(c["method"], c["ipc"])
            protocol = b.cfg.bn_protocol
            write(f"bn-{protocol.arch}-{key}", {k: c[k] for k in ("method", "ipc", "arch", "mean", "std", "accs")} | {"made_with": made_with(b, cc, protocol)})
    for row in r.get("lrs", []):
        for method, mean in ((row["method"], row["teacher_mean"]), ("random", row["random_teacher_mean"])):
            if method in methods:
                key, cc = b.grid_set(method, row["ipc"])
                write(f"teacher-{key}", {"method": method, "ipc": row["ipc"], "mean": mean, "std": None, "accs": None,
                                         "made_with": made_with(b, cc, extra={"labels": "teacher"})})
    if r.get("generator"):  # the generator's metrics (plain samples of the shipped model), with their own record
        write("generator", r["generator"])
    return sorted(set(written))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--methods", required=True, help="comma-separated: the methods whose cells are carried")
    a = p.parse_args(argv)
    keys = carry(a.results, a.out, a.methods.split(","))
    print(f"carried {len(keys)} cells into {a.out / 'cells'}")


if __name__ == "__main__":
    main()
