"""Plots of a bench: accuracy and synthesis cost vs IPC, the lossless curve, a sample grid."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from .data import ImageSet  # noqa: E402
from .fsio import atomic_write_bytes  # noqa: E402
from .methods import DIFFUSION_METHODS  # noqa: E402
from .outputset import load_output_set  # noqa: E402


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _per_method(r: dict[str, Any], key: str, ylabel: str, path: Path, log: bool = False, full: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.get_cmap("tab20").colors
    for i, m in enumerate(dict.fromkeys(c["method"] for c in r["cells"])):
        rows = sorted((c for c in r["cells"] if c["method"] == m), key=lambda c: c["ipc"])
        ys = [c[key] * (100 if key == "mean" else 1) for c in rows]
        # model-based methods solid, the rest (real selection, DM) dashed; one colour each from 20
        ax.plot([c["ipc"] for c in rows], ys, marker="o", label=m, color=colours[(2 * i) % 20 + (2 * i) // 20],
                ls="-" if m in DIFFUSION_METHODS else "--")
        if key == "mean":
            ax.fill_between([c["ipc"] for c in rows], [y - c["std"] * 100 for y, c in zip(ys, rows)],
                            [y + c["std"] * 100 for y, c in zip(ys, rows)], alpha=0.15)
    if full:
        ax.axhline(r["full"]["mean"] * 100, color="k", ls="--", label="full data")
    ax.set_xscale("log")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("images per class")
    ax.set_ylabel(ylabel)
    ax.set_title(r["dataset"])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def plot_curve(r: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for m, lab in dict.fromkeys((c["method"], c["labels"]) for c in r["curve"]):
        rows = sorted((c for c in r["curve"] if c["method"] == m and c["labels"] == lab), key=lambda c: c["budget"])
        ax.errorbar([c["budget"] * 100 for c in rows], [c["mean"] * 100 for c in rows], [c["std"] * 100 for c in rows],
                    marker="o", ls="-" if lab == "hard" else ":", label=f"{m} ({lab})", capsize=2)
    f = r["full"]
    ax.axhspan((f["mean"] - f["std"]) * 100, (f["mean"] + f["std"]) * 100, color="k", alpha=0.15, label="full ± std")
    ax.set_xlabel("budget (% of the train split)")
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_samples(sets: dict[str, ImageSet], path: Path, per_class: int = 1) -> None:
    """One row per method, one column per class (the paper's Figure 5 layout)."""
    rows = []
    for name, s in sets.items():
        picks = [s.class_images(c)[:per_class] for c in range(s.num_classes)]
        rows.append(torch.cat(picks))
    ncol = len(rows[0])
    grid = make_grid(torch.cat(rows), nrow=ncol, padding=2, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(ncol * 0.6 + 1.5, len(rows) * 0.6 + 0.3))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1) if grid.shape[0] == 1 else grid.permute(1, 2, 0), cmap="gray")
    h = grid.shape[1] / len(rows)
    ax.set_yticks([h * (i + 0.5) for i in range(len(rows))], list(sets))
    ax.set_xticks([])
    _save(fig, path)


def plot_all(r: dict[str, Any], out: Path, real: ImageSet) -> None:
    out = Path(out)
    _per_method(r, "mean", "top-1 (%)", out / "accuracy_vs_ipc.png", full=True)
    _per_method(r, "synthesis_seconds", "synthesis seconds", out / "cost_vs_ipc.png", log=True)
    if r["curve"]:
        plot_curve(r, out / "lossless_curve.png")
    ipc = 10 if any(c["ipc"] == 10 for c in r["cells"]) else r["cells"][0]["ipc"]
    sets = {"real": real}
    for m in dict.fromkeys(c["method"] for c in r["cells"]):  # every method of the table that made a set
        p = out / "sets" / f"{m}-ipc{ipc}"
        if (p / "manifest.json").is_file():
            sets[m] = load_output_set(p)
    plot_samples(sets, out / f"samples_ipc{ipc}.png")
