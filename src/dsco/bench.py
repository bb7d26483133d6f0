"""`dsco bench`: concentrate and evaluate a grid of methods x IPC, the lossless curve, table and plots.

Every cell is cached under OUT (its output set and its result), so an interrupted bench resumes.
"""
from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch

from .orchestrate import ConcentrateConfig, concentrate, determining, with_later_defaults
from .data import load_dataset
from .doping import DopingConfig
from .errors import DscoError
from .evaluate import PROTOCOLS, EvalProtocol, TeacherConfig, ensure_teacher, evaluate_set
from .fsio import atomic_write_bytes, atomic_write_json
from .methods import DIFFUSION_METHODS, METHODS, D3HRConfig
from .outputset import load_output_set, read_manifest

CURVE_METHODS = ("dsco-doping", "dsco", "random")
SCHEMA = {
    "required": ["dataset", "arch", "runs", "machine", "command", "full", "cells", "curve", "lossless_point"],
    "cell": ["method", "ipc", "mean", "std", "synthesis_seconds"],
    "curve": ["method", "labels", "budget", "mean", "std"],
}


@dataclass
class BenchConfig:
    dataset: str = "mnist5k"
    out: str = "runs/bench"
    ipcs: list[int] = field(default_factory=lambda: [1, 10, 50])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    runs: int = 3
    seed: int = 0
    model: Optional[str] = None
    schedule: Optional[str] = None  # NOpt preset of the dsco sets; None = the dataset's default (default_schedule)
    curve: bool = False
    budgets: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    curve_synthetic_ipc: int = 10  # the fixed synthetic part of the doped sets
    curve_synthetic_max_budget: float = 0.1  # synthetic-only DsCo beyond this is too slow for CPU
    curve_labels: list[str] = field(default_factory=lambda: ["hard", "teacher"])
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    test_dataset: Optional[str] = None  # test split of a folder dataset
    teacher: Optional[str] = None  # teacher directory for doping and teacher labels; default OUT/teacher
    command: str = ""
    cached_only: bool = False  # assemble the table from cells already computed (by other bench processes); skip the rest
    # cross-architecture check: the sets of these methods at this IPC evaluated again with a second protocol
    cross_protocol: Optional[EvalProtocol] = None
    cross_ipc: int = 10
    cross_methods: list[str] = field(default_factory=lambda: ["dsco", "random", "diffusion"])
    # every grid set evaluated again with a BatchNorm network (None = skip): most users' networks normalise by batch
    bn_protocol: Optional[EvalProtocol] = field(default_factory=lambda: PROTOCOLS["cpu-bn-convnet"])
    # generator metrics of the model's plain samples (this many per class) against the test split; 0 = skip
    generator_samples: int = 100
    # sets per diffusion-based cell, from synthesis seeds seed, seed+1, ...; the other columns use the first
    synthesis_seeds: int = 1
    # DD-Ranking's label-robust score per grid cell: needs each set and a same-size random subset trained with teacher labels
    lrs: bool = True
    # D3HR's candidate groups per class: the original's 10^8 take about an hour a class on one core; the CPU table
    # scores 10^5 (ours, labelled in the table); None = the method's default
    d3hr_candidates: Optional[int] = 100_000
    data_root: Optional[str] = None  # a torchvision root or an ImageNet-layout folder
    download: bool = False  # let torchvision download into data_root
    on_bad_image: str = "fail"


def machine() -> str:
    return f"{platform.node() or 'host'}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def validate_results(r: dict[str, Any]) -> None:
    """Check results.json against the documented schema (docs/benchmarks.md)."""
    missing = [k for k in SCHEMA["required"] if k not in r]
    if missing:
        raise DscoError(f"results.json lacks {missing}")
    if not {"mean", "std"} <= set(r["full"]):
        raise DscoError("results.json: full needs mean and std")
    for kind, rows in (("cell", r["cells"]), ("curve", r["curve"])):
        for row in rows:
            if not set(SCHEMA[kind]) <= set(row):
                raise DscoError(f"results.json: a {kind} row lacks {set(SCHEMA[kind]) - set(row)}")
            if not 0 <= row["mean"] <= 1 or row["std"] < 0:
                raise DscoError(f"results.json: {kind} row {row} has an accuracy out of range")


def label_robust_score(full_hard: float, set_hard: float, set_teacher: float, random_teacher: float, lam: float = 0.5) -> dict[str, float]:
    """DD-Ranking (Li et al. 2025): HLR = Acc(full, hard) - Acc(set, hard); IOR = Acc(set, teacher labels) -
    Acc(same-size random real subset, teacher labels); alpha = lam IOR - (1 - lam) HLR; LRS = (e^alpha - e^-1) /
    (e - e^-1). Accuracies are fractions, so alpha is in [-1, 1] and LRS in [0, 1]."""
    hlr, ior = full_hard - set_hard, set_teacher - random_teacher
    alpha = lam * ior - (1 - lam) * hlr
    return {"hlr": hlr, "ior": ior, "lrs": (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))}


def lossless_point(rows: list[dict], full: dict) -> Optional[float]:
    """Smallest budget whose mean accuracy is within one std of full-data accuracy.

    Accuracies are counts over the test split stored as float32, so a mean exactly on the band's edge
    can read 1e-8 below it: the comparison allows 1e-6.
    """
    ok = [r["budget"] for r in rows if r["mean"] >= full["mean"] - full["std"] - 1e-6]
    return min(ok) if ok else None


class _Bench:
    def __init__(self, cfg: BenchConfig):
        self.cfg, self.out = cfg, Path(cfg.out)
        data = {"data_root": cfg.data_root, "download": cfg.download, "on_bad_image": cfg.on_bad_image}
        self.train = load_dataset(cfg.dataset, "train", **data)
        self.test = load_dataset(cfg.dataset, "test", test_path=cfg.test_dataset, **data)
        self.teacher_dir = cfg.teacher or str(self.out / "teacher")

    def cached(self, key: str, compute, made_with: dict, protocol: Optional[EvalProtocol] = None) -> Optional[dict]:
        """A cell's result from OUT/cells, computed once; refused if made with another configuration.

        With `cached_only`, a cell not computed yet is None (left out of the table).
        """
        path = self.out / "cells" / f"{key}.json"
        if self.cfg.cached_only and not path.is_file():
            return None
        protocol = protocol or self.cfg.protocol
        made_with = json.loads(json.dumps({**made_with, "protocol": asdict(protocol), "runs": self.cfg.runs}))
        if path.is_file():
            result = json.loads(path.read_text())
            stored = with_later_defaults(dict(result.get("made_with") or {}))
            if any(stored.get(k, object()) != v for k, v in made_with.items()):
                raise DscoError(f"cached bench cell {path} was made with another configuration: delete it and {self.out / 'sets' / key}")
            return result
        result = {**compute(), "made_with": made_with}
        atomic_write_json(path, result)
        return result

    def set_config(self, key: str, method: str, ipc: int, doping: Optional[DopingConfig] = None, seed_offset: int = 0) -> ConcentrateConfig:
        synthetic = str(self.out / "sets" / f"{method}-ipc{ipc}") if doping is not None else None
        return ConcentrateConfig(dataset=self.cfg.dataset, out=str(self.out / "sets" / key), method=method, ipc=ipc,
                                 seed=self.cfg.seed + seed_offset, model=self.cfg.model, schedule=self.cfg.schedule,
                                 doping=doping or DopingConfig(), d3hr=self.d3hr_config(),
                                 doping_protocol=self.cfg.protocol, test_dataset=self.cfg.test_dataset,
                                 data_root=self.cfg.data_root, download=self.cfg.download, on_bad_image=self.cfg.on_bad_image,
                                 synthetic_set=synthetic).resolved()

    def d3hr_config(self) -> D3HRConfig:
        cfg = D3HRConfig()
        return replace(cfg, candidates=self.cfg.d3hr_candidates) if self.cfg.d3hr_candidates else cfg

    def make_set(self, cc: ConcentrateConfig) -> Path:
        return concentrate(cc, resume=True, train=self.train)

    def evaluate(self, path: Path, labels: str = "hard", protocol: Optional[EvalProtocol] = None) -> dict:
        teacher = None
        if labels == "teacher":
            tc = TeacherConfig(self.cfg.dataset, self.cfg.seed, self.cfg.protocol)
            teacher = ensure_teacher(self.teacher_dir, self.train, lambda: self.test, tc, progress=False)
        return evaluate_set(load_output_set(path), self.test, protocol or self.cfg.protocol, self.cfg.runs, labels, teacher,
                            progress=False)

    def grid_set(self, method: str, ipc: int, seed_offset: int = 0) -> tuple[str, ConcentrateConfig]:
        """The key and configuration of the table's set for (method, ipc) (synthesis seed `seed_offset` past the
        bench's), shared by its cell and its cells with other protocols."""
        key = f"{method}-ipc{ipc}" + (f"-s{seed_offset}" if seed_offset else "")
        return key, self.set_config(key, method, ipc, seed_offset=seed_offset)

    def set_cell(self, method: str, ipc: int, seed_offset: int = 0) -> Optional[dict]:
        key, cc = self.grid_set(method, ipc, seed_offset)

        def compute() -> dict:
            path = self.make_set(cc)
            r = self.evaluate(path)
            m = read_manifest(path)  # the cost from scratch: work read from a method's cache counts as redone
            reused = m.get("reused_seconds", 0.0)
            return {"method": method, "ipc": ipc, "mean": r["mean"], "std": r["std"], "accs": r["accs"],
                    "synthesis_seconds": m["synthesis_seconds"] + reused, "reused_seconds": reused}

        return self.cached(key, compute, determining(cc))

    def cell(self, method: str, ipc: int) -> Optional[dict]:
        """A table cell: one set, or for a diffusion-based method `synthesis_seeds` sets, reported as the mean and
        std of the sets' mean accuracies (the spread between sets, not between trainings of one set). With
        `cached_only`, the sets computed so far (the first ones; the cell records how many)."""
        seeds = self.cfg.synthesis_seeds if method in DIFFUSION_METHODS else 1
        sets = []
        for k in range(seeds):
            c = self.set_cell(method, ipc, k)
            if c is None:
                break
            sets.append(c)
        if not sets or (len(sets) < seeds and not self.cfg.cached_only):
            return None
        if len(sets) == 1:
            return {**sets[0], "sets": 1}
        means = [c["mean"] for c in sets]
        return {"method": method, "ipc": ipc, "mean": statistics.fmean(means), "std": statistics.stdev(means),
                "set_means": means, "sets": len(sets), "accs": [a for c in sets for a in c["accs"]],
                "synthesis_seconds": statistics.fmean(c["synthesis_seconds"] for c in sets),
                "reused_seconds": statistics.fmean(c.get("reused_seconds", 0.0) for c in sets)}

    def protocol_cell(self, method: str, ipc: int, protocol: EvalProtocol, prefix: str) -> Optional[dict]:
        """The set of cell (method, ipc) trained again with another protocol (hard labels): the
        cross-architecture check (prefix "cross") and the BatchNorm column ("bn")."""
        key, cc = self.grid_set(method, ipc)

        def compute() -> dict:
            r = self.evaluate(self.make_set(cc), protocol=protocol)
            return {"method": method, "ipc": ipc, "arch": protocol.arch, "mean": r["mean"], "std": r["std"], "accs": r["accs"]}

        return self.cached(f"{prefix}-{protocol.arch}-{key}", compute, determining(cc), protocol=protocol)

    def teacher_cell(self, method: str, ipc: int) -> Optional[dict]:
        """The set of cell (method, ipc) trained with teacher labels (the main protocol)."""
        key, cc = self.grid_set(method, ipc)

        def compute() -> dict:
            r = self.evaluate(self.make_set(cc), "teacher")
            return {"method": method, "ipc": ipc, "mean": r["mean"], "std": r["std"], "accs": r["accs"]}

        return self.cached(f"teacher-{key}", compute, {**determining(cc), "labels": "teacher"})

    def lrs_cell(self, cell: dict, full: dict) -> Optional[dict]:
        """DD-Ranking's scores of a grid cell, from its hard and teacher-label accuracies and random's at its IPC."""
        mine, rand = self.teacher_cell(cell["method"], cell["ipc"]), self.teacher_cell("random", cell["ipc"])
        if mine is None or rand is None:
            return None
        return {"method": cell["method"], "ipc": cell["ipc"], "teacher_mean": mine["mean"],
                "random_teacher_mean": rand["mean"], **label_robust_score(full["mean"], cell["mean"], mine["mean"], rand["mean"])}

    def generator(self) -> Optional[dict]:
        """Fréchet distance, precision / recall, density / coverage and fidelity of the model's plain samples."""
        from .orchestrate import default_model_dir
        from .generator_metrics import generator_metrics
        from .models.loading import load_backend

        model = str(self.cfg.model or default_model_dir(self.cfg.dataset))
        n = self.cfg.generator_samples

        def compute() -> dict:
            tc = TeacherConfig(self.cfg.dataset, self.cfg.seed, self.cfg.protocol)
            teacher = ensure_teacher(self.teacher_dir, self.train, lambda: self.test, tc, progress=False)
            name = f"teacher: {self.cfg.protocol.arch} (width {self.cfg.protocol.width}) trained on the train split, penultimate features"
            return generator_metrics(load_backend(model), self.test, teacher, name, n, self.cfg.seed)

        return self.cached("generator", compute, {"model": model, "per_class": n, "seed": self.cfg.seed})

    def curve_row(self, method: str, budget: float, labels: str) -> Optional[dict]:
        n_total = round(budget * len(self.train))
        c = self.train.num_classes
        syn = self.cfg.curve_synthetic_ipc
        if method == "dsco-doping":
            if n_total <= syn * c:
                return None
            if self.cell("dsco", syn) is None:  # the synthetic part, made once and shared by every budget
                return None
            key, args = f"doping-b{budget}", ("dsco", syn, DopingConfig(budget=budget, teacher=self.teacher_dir))
        elif method == "dsco":
            if budget > self.cfg.curve_synthetic_max_budget:
                return None
            key, args = f"dsco-ipc{n_total // c}", ("dsco", n_total // c, None)
        else:
            key, args = f"random-ipc{n_total // c}", ("random", n_total // c, None)

        cc = self.set_config(key, *args)

        def compute() -> dict:
            r = self.evaluate(self.make_set(cc), labels)
            return {"method": method, "labels": labels, "budget": budget, "mean": r["mean"], "std": r["std"], "accs": r["accs"]}

        return self.cached(f"curve-{key}-{labels}", compute, determining(cc))


def bench(cfg: BenchConfig) -> Path:
    """Run the grid (and the curve), then write results.json, results.md and the plots into cfg.out."""
    for m in cfg.methods:
        if m not in METHODS:
            raise DscoError(f"unknown method {m!r}: valid names are {', '.join(METHODS)}")
    b = _Bench(cfg)
    t0 = time.time()
    full = b.cached("full", lambda: evaluate_set(b.train, b.test, cfg.protocol, cfg.runs, progress=False), {"dataset": cfg.dataset})
    if full is None:
        raise DscoError(f"--cached-only: no full-data result in {b.out / 'cells'} yet")
    cells = [c for ipc in cfg.ipcs for m in cfg.methods if (c := b.cell(m, ipc)) is not None]
    curve: list[dict] = []
    lossless: dict[str, Optional[float]] = {}
    if cfg.curve:
        for labels in cfg.curve_labels:
            for m in CURVE_METHODS:
                rows = [r for bud in cfg.budgets if (r := b.curve_row(m, bud, labels)) is not None]
                curve += rows
                lossless[m if labels == "hard" else f"{m}/teacher"] = lossless_point(rows, full)
    cross = []
    if cfg.cross_protocol is not None:
        cross = [c for m in cfg.cross_methods if (c := b.protocol_cell(m, cfg.cross_ipc, cfg.cross_protocol, "cross")) is not None]
    bn = []
    if cfg.bn_protocol is not None:
        bn = [c for ipc in cfg.ipcs for m in cfg.methods if (c := b.protocol_cell(m, ipc, cfg.bn_protocol, "bn")) is not None]
    lrs = [r for c in cells if (r := b.lrs_cell(c, full)) is not None] if cfg.lrs else []
    generator = None
    if cfg.generator_samples and any(m in DIFFUSION_METHODS for m in cfg.methods):
        generator = b.generator()
    results = {
        "dataset": cfg.dataset, "arch": cfg.protocol.arch, "runs": cfg.runs, "machine": machine(),
        "command": cfg.command, "seconds": round(time.time() - t0, 1), "protocol": asdict(cfg.protocol),
        "synthesis_seeds": cfg.synthesis_seeds, "full": {"mean": full["mean"], "std": full["std"]}, "cells": cells, "curve": curve, "lossless_point": lossless,
        "d3hr_candidates": b.d3hr_config().candidates,
    }
    if cfg.cross_protocol is not None:
        results["cross_arch"] = {"protocol": asdict(cfg.cross_protocol), "ipc": cfg.cross_ipc, "rows": cross}
    if cfg.bn_protocol is not None:
        results["bn"] = {"protocol": asdict(cfg.bn_protocol), "cells": bn}
    if generator is not None:
        results["generator"] = generator
    if cfg.lrs:
        results["lrs"] = lrs
    validate_results(results)
    out = Path(cfg.out)
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "results.md", render_table(results).encode())
    from .plots import plot_all

    plot_all(results, out, b.train)
    return out


def render_table(r: dict[str, Any]) -> str:
    """Methods x IPC, mean ± std in %, best per column in bold, and the full-data row."""
    ipcs = sorted({c["ipc"] for c in r["cells"]})
    methods = list(dict.fromkeys(c["method"] for c in r["cells"]))
    by = {(c["method"], c["ipc"]): c for c in r["cells"]}
    best = {ipc: max((c["mean"] for c in r["cells"] if c["ipc"] == ipc), default=0) for ipc in ipcs}
    seeds = r.get("synthesis_seeds", 1)
    spread = (f"; model-based methods: mean ± std of the set means over {seeds} synthesis seeds, each set trained "
              f"{r['runs']} times (fewer sets where marked)" if seeds > 1 else "")
    lines = [f"Top-1 accuracy (%) on {r['dataset']}, {r['arch']}, {r['runs']} runs, hard labels{spread}", "",
             "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |", "|---" * (len(ipcs) + 1) + "|"]
    for m in methods:
        cells = []
        for ipc in ipcs:
            c = by.get((m, ipc))
            if c is None:
                cells.append("–")
                continue
            s = f"{c['mean'] * 100:.2f} ± {c['std'] * 100:.2f}"
            s = f"**{s}**" if c["mean"] == best[ipc] else s
            few = m in DIFFUSION_METHODS and c.get("sets", 1) < seeds
            cells.append(s + (f" ({c.get('sets', 1)} set{'s' if c.get('sets', 1) > 1 else ''})" if few else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append(f"| full train split | {r['full']['mean'] * 100:.2f} ± {r['full']['std'] * 100:.2f} |" + " |" * (len(ipcs) - 1))
    if "d3hr" in methods:
        n = r.get("d3hr_candidates")
        lines += ["", f"d3hr: {n:,} candidate groups per class" + (" (ours; the original scores 10^8)" if n and n < 10**8 else "")
                  + "; at IPC 1 a group of one has no std or skewness, so D3HR there is dsco's extension (scored by its mean)."]
    lines += ["", "Synthesis seconds (whole set, one process; work read from a method's cache counted as redone):", "",
              "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |", "|---" * (len(ipcs) + 1) + "|"]
    def cost(m: str, i: int) -> str:
        if (m, i) not in by:
            return "–"
        s, plain = by[(m, i)]["synthesis_seconds"], by.get(("diffusion", i))
        ratio = f" ({s / plain['synthesis_seconds']:.1f}x plain)" if plain and plain["synthesis_seconds"] and m != "diffusion" else ""
        return f"{s:.1f}{ratio}"

    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cost(m, i) for i in ipcs) + " |")
    if r["curve"]:
        budgets = sorted({c["budget"] for c in r["curve"]})
        lines += ["", "Lossless curve: accuracy (%) by budget (fraction of the train split)", "",
                  "| method | labels | " + " | ".join(f"{b:.0%}" for b in budgets) + " |", "|---" * (len(budgets) + 2) + "|"]
        keys = list(dict.fromkeys((c["method"], c["labels"]) for c in r["curve"]))
        cb = {(c["method"], c["labels"], c["budget"]): c for c in r["curve"]}
        for m, lab in keys:
            vals = [f"{cb[(m, lab, b)]['mean'] * 100:.2f} ± {cb[(m, lab, b)]['std'] * 100:.2f}" if (m, lab, b) in cb else "–" for b in budgets]
            lines.append(f"| {m} | {lab} | " + " | ".join(vals) + " |")
        lines += ["", "Lossless point (smallest budget within one std of full data): " +
                  ", ".join(f"{k}: {'none' if v is None else f'{v:.0%}'}" for k, v in r["lossless_point"].items())]
    lines += render_versus(r)
    if r.get("lrs"):
        lines += render_lrs(r)
    if r.get("bn") and r["bn"]["cells"]:
        lines += render_bn(r)
    if r.get("generator"):
        g = r["generator"]["overall"]
        lines += ["", f"Generator ({r['generator']['per_class_samples']} plain samples per class vs the test split; "
                  f"{r['generator']['feature_net']}): Fréchet distance {g['fd']:.2f}, precision {g['precision']:.3f}, "
                  f"recall {g['recall']:.3f}, density {g['density']:.3f}, coverage {g['coverage']:.3f}, "
                  f"class fidelity {g['fidelity']:.1%}"]
    if r.get("cross_arch") and r["cross_arch"]["rows"]:
        lines += render_cross(r)
    lines += ["", f"Machine: {r['machine']}", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def versus(r: dict[str, Any], ours: str = "dsco") -> dict[int, list[dict]]:
    """Per IPC, `ours` minus every other method in points, with the combined spread sqrt(s_a^2 + s_b^2) of the two
    cells (between synthesis seeds for model-based cells) and a verdict: ahead / behind when the difference
    exceeds that spread, else level."""
    by = {(c["method"], c["ipc"]): c for c in r["cells"]}
    out: dict[int, list[dict]] = {}
    for ipc in sorted({c["ipc"] for c in r["cells"]}):
        mine = by.get((ours, ipc))
        if mine is None:
            continue
        rows = []
        for c in (c for c in r["cells"] if c["ipc"] == ipc and c["method"] != ours):
            diff, spread = (mine["mean"] - c["mean"]) * 100, math.hypot(mine["std"], c["std"]) * 100
            verdict = "ahead" if diff > spread else "behind" if diff < -spread else "level"
            # a model-based cell of one set where several were asked has only the spread between trainings
            fewer = any(x["method"] in DIFFUSION_METHODS and x.get("sets", 1) < r.get("synthesis_seeds", 1) for x in (mine, c))
            rows.append({"method": c["method"], "diff": diff, "spread": spread, "verdict": verdict, "fewer_sets": fewer})
        out[ipc] = rows
    return out


def render_versus(r: dict[str, Any], ours: str = "dsco") -> list[str]:
    """The `versus` comparison as one line per IPC, same-generator (model-based) methods first."""
    table = versus(r, ours)
    if not table:
        return []
    lines = ["", f"{ours} against each method, points (± combined spread; ahead / behind only beyond it):", ""]
    for ipc, rows in table.items():
        rows = sorted(rows, key=lambda x: (x["method"] not in DIFFUSION_METHODS, -x["diff"]))
        phrase = {"ahead": "ahead of", "behind": "behind", "level": "level with"}
        lines.append(f"- IPC {ipc}: " + "; ".join(f"{phrase[x['verdict']]} {x['method']} ({x['diff']:+.2f} ± {x['spread']:.2f})"
                                                  + ("*" if x["fewer_sets"] else "") for x in rows))
    if any(x["fewer_sets"] for rows in table.values() for x in rows):
        lines.append("- \\* a model-based cell with fewer synthesis seeds than the table's: its spread is partly or only "
                     "between trainings of one set, which understates the spread between sets")
    return lines


def render_lrs(r: dict[str, Any]) -> list[str]:
    """DD-Ranking's label-robust score (%) per cell, with HLR and IOR in points."""
    ipcs = sorted({c["ipc"] for c in r["lrs"]})
    by = {(c["method"], c["ipc"]): c for c in r["lrs"]}
    lines = ["", "DD-Ranking label-robust score, LRS % (HLR / IOR in points; teacher labels for IOR)", "",
             "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |", "|---" * (len(ipcs) + 1) + "|"]
    for m in dict.fromkeys(c["method"] for c in r["lrs"]):
        vals = [f"{by[(m, i)]['lrs'] * 100:.1f} ({by[(m, i)]['hlr'] * 100:.1f} / {by[(m, i)]['ior'] * 100:+.1f})"
                if (m, i) in by else "–" for i in ipcs]
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return lines


def render_bn(r: dict[str, Any]) -> list[str]:
    """The BatchNorm network's accuracy on every grid set, and its gap to the main protocol's."""
    arch = r["bn"]["protocol"]["arch"]
    ipcs = sorted({c["ipc"] for c in r["bn"]["cells"]})
    main = {(c["method"], c["ipc"]): c["mean"] for c in r["cells"]}
    by = {(c["method"], c["ipc"]): c for c in r["bn"]["cells"]}
    lines = ["", f"The same sets trained with {arch} (BatchNorm): accuracy (%) and, in brackets, minus {r['arch']}'s", "",
             "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |", "|---" * (len(ipcs) + 1) + "|"]
    for m in dict.fromkeys(c["method"] for c in r["bn"]["cells"]):
        vals = []
        for i in ipcs:
            c = by.get((m, i))
            gap = f" ({(c['mean'] - main[(m, i)]) * 100:+.2f})" if c and (m, i) in main else ""
            vals.append(f"{c['mean'] * 100:.2f} ± {c['std'] * 100:.2f}{gap}" if c else "–")
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return lines


def ranking(scores: dict[str, float]) -> list[str]:
    """Methods from best to worst mean accuracy."""
    return sorted(scores, key=lambda m: -scores[m])


def render_cross(r: dict[str, Any]) -> list[str]:
    """The cross-architecture rows beside the main protocol's, and whether the ranking holds."""
    x = r["cross_arch"]
    ipc, arch = x["ipc"], x["protocol"]["arch"]
    main = {c["method"]: c["mean"] for c in r["cells"] if c["ipc"] == ipc}
    rows = [c for c in x["rows"] if c["method"] in main]
    lines = ["", f"Cross-architecture check, IPC {ipc}: {r['arch']} vs {arch} (batch {x['protocol']['batch_size']}), "
             "hard labels", "", f"| method | {r['arch']} | {arch} |", "|---|---|---|"]
    for c in rows:
        lines.append(f"| {c['method']} | {main[c['method']] * 100:.2f} | {c['mean'] * 100:.2f} ± {c['std'] * 100:.2f} |")
    a = ranking({c["method"]: main[c["method"]] for c in rows})
    b = ranking({c["method"]: c["mean"] for c in rows})
    lines += ["", f"Ranking with {r['arch']}: {' > '.join(a)}; with {arch}: {' > '.join(b)} "
              f"({'the same' if a == b else 'different'})."]
    return lines
