"""`dsco concentrate`: per class, resumable orchestration of every method into one output set."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from .baselines import SELECTORS, DMConfig, distribution_matching
from .data import ImageSet, load_dataset
from .datafree import DataFreeConfig, datafree_class
from .doping import DOPING_SELECTORS, DopingConfig, clarity, real_count, select
from .errors import DscoError
from .evaluate import EvalProtocol, TeacherConfig, ensure_teacher, predict_proba, train_classifier
from .features import RandomFeatureNet
from .fsio import atomic_write_json, safe_name
from .models.diffusion import DiffusionBackend, plain_sample
from .models.pixel import PixelBackend
from .nopt import NOptConfig, nopt_class
from .outputset import FORMAT, read_images, write_class_images

METHODS = ("dsco", "dsco-datafree", "random", "herding", "kcenter", "diffusion", "dm")
DIFFUSION_METHODS = ("dsco", "dsco-datafree", "diffusion")
FEATURE_SPACES = ("pixels", "random-conv")
SCHEDULES = ("reference", "fast")


def nopt_preset(name: str) -> NOptConfig:
    """`reference`: the authors' schedule. `fast`: ours for small images on CPU (benchmarks/nopt_cost.py)."""
    if name == "reference":
        return NOptConfig()
    if name == "fast":
        return NOptConfig(iterations=30, feature_width=64, k_noises=1, max_targets=100, target_offset=0)
    raise DscoError(f"unknown NOpt schedule {name!r}: valid names are {', '.join(SCHEDULES)}")


def default_model_dir(dataset: str) -> Path:
    """The shipped model for the embedded default dataset."""
    if dataset != "mnist5k":
        raise DscoError(f"no shipped model for dataset {dataset!r}: pass --model DIR (dsco train-model)")
    return Path(str(resources.files("dsco") / "assets" / "mnist5k"))


def default_teacher_dir(dataset: str) -> Path:
    return Path.home() / ".cache" / "dsco" / "teachers" / safe_name(dataset)


@dataclass
class ConcentrateConfig:
    """A whole concentration run; saved in the manifest so it can be reproduced."""

    dataset: str = "mnist5k"
    out: str = "runs/mnist5k-dsco-ipc10"
    method: str = "dsco"
    ipc: int = 10
    seed: int = 0
    model: Optional[str] = None  # diffusion model directory; None = the shipped one for mnist5k
    sampling_steps: int = 50
    guidance: float = 2.0
    schedule: str = "fast"  # NOpt preset the `nopt` field starts from (see nopt_preset)
    nopt: Optional[NOptConfig] = None  # None = the preset
    datafree: DataFreeConfig = field(default_factory=DataFreeConfig)
    doping: DopingConfig = field(default_factory=DopingConfig)
    doping_protocol: EvalProtocol = field(default_factory=EvalProtocol)
    feature_space: str = "random-conv"
    dm: DMConfig = field(default_factory=DMConfig)
    data_root: Optional[str] = None
    test_dataset: Optional[str] = None
    on_bad_image: str = "fail"

    def resolved(self) -> "ConcentrateConfig":
        """Validate names and ranges, and fill the NOpt knobs from the preset."""
        if self.method not in METHODS:
            raise DscoError(f"unknown method {self.method!r}: valid names are {', '.join(METHODS)}")
        if self.feature_space not in FEATURE_SPACES:
            raise DscoError(f"unknown feature space {self.feature_space!r}: valid names are {', '.join(FEATURE_SPACES)}")
        if self.doping.selector not in DOPING_SELECTORS:
            raise DscoError(f"unknown doping selector {self.doping.selector!r}: valid names are {', '.join(DOPING_SELECTORS)}")
        if not isinstance(self.ipc, int) or self.ipc <= 0:
            raise DscoError(f"IPC must be a positive integer, got {self.ipc}")
        nopt = self.nopt if self.nopt is not None else nopt_preset(self.schedule)
        nopt.validate()
        templates = self.datafree.templates or (200 if self.schedule == "reference" else 20)
        if templates < 1:
            raise DscoError(f"data-free templates must be >= 1, got {templates}")
        return replace(self, nopt=nopt, datafree=replace(self.datafree, templates=templates))


def determining(cfg: ConcentrateConfig) -> dict[str, Any]:
    """The config fields that can change the set `cfg` builds (another method's knobs dropped)."""
    d = asdict(cfg)
    if cfg.method not in ("dsco", "dsco-datafree"):
        d.pop("nopt")
    if cfg.method != "dsco-datafree":
        d.pop("datafree")
    if cfg.method != "dm":
        d.pop("dm")
    if cfg.method not in ("herding", "kcenter"):
        d.pop("feature_space")
    if not cfg.doping.enabled:
        d.pop("doping")
        d.pop("doping_protocol")
    return d


def _class_seed(seed: int, label: int) -> int:
    return seed * 1_000_003 + label


def _check_backend(backend: DiffusionBackend, class_names: list[str], shape: tuple[int, ...]) -> None:
    if backend.num_classes != len(class_names):
        raise DscoError(f"the diffusion model has {backend.num_classes} classes but the dataset has {len(class_names)}")
    if tuple(backend.sample_shape) != tuple(shape):
        raise DscoError(f"the diffusion model makes {tuple(backend.sample_shape)} samples but the dataset's images are {tuple(shape)}")


def _selection_features(images: torch.Tensor, space: str, seed: int) -> torch.Tensor:
    if space == "pixels":
        return images.flatten(1)
    return RandomFeatureNet(images.shape[1], 32, seed=seed).batched(images * 2 - 1)


class _Run:
    """State of one run: the work directory beside `out`, its finished classes, and the inputs."""

    def __init__(self, cfg: ConcentrateConfig, train: Optional[ImageSet], backend: Optional[DiffusionBackend], resume: bool, progress: bool):
        self.cfg, self.train, self.backend, self.progress = cfg, train, backend, progress
        self.out = Path(cfg.out)
        self.work = self.out.parent / f".{self.out.name}.work"
        saved = self.work / "run.json"
        record = {"config": asdict(cfg)}
        if self.work.exists() and not resume:
            raise DscoError(f"an interrupted run is in {self.work}: pass --resume to continue it, or delete it")
        if resume and saved.is_file():
            if json.loads(saved.read_text())["config"] != json.loads(json.dumps(record["config"])):
                raise DscoError(f"--resume: the run in {self.work} used a different configuration")
        else:
            atomic_write_json(saved, record)

    def class_record(self, name: str) -> Path:
        return self.work / "classes" / f"{safe_name(name)}.json"

    def done(self, name: str) -> Optional[dict[str, Any]]:
        p = self.class_record(name)
        return json.loads(p.read_text()) if p.is_file() else None


def _synthesise_class(run: _Run, label: int, name: str, phi_shared: Optional[RandomFeatureNet]) -> tuple[torch.Tensor, list[dict], dict]:
    """One class's images in [0, 1], their manifest sources, and the class's record."""
    cfg, backend, n = run.cfg, run.backend, run.cfg.ipc
    g = torch.Generator().manual_seed(_class_seed(cfg.seed, label))
    stats: dict[str, Any] = {}
    if cfg.method in DIFFUSION_METHODS:
        if cfg.method == "dsco":
            real = backend.encode(run.train.class_images(label))
            z, records = nopt_class(backend, label, real, n, cfg.nopt, g, _class_seed(cfg.seed, label) + 1, name, run.progress)
        elif cfg.method == "dsco-datafree":
            z, records = datafree_class(backend, label, n, cfg.nopt, cfg.datafree, g, phi_shared, name, run.progress)
        else:
            z, records = plain_sample(backend, label, n, g), []
        stats["steps"] = [asdict(r) for r in records]
        return backend.decode(z), [{"source": "synthetic"} for _ in range(n)], stats
    idx = run.train.indices_of(label)
    real = run.train.images[idx]
    if cfg.method == "dm":
        return distribution_matching(real, n, cfg.dm, g), [{"source": "synthetic"} for _ in range(n)], stats
    feats = _selection_features(real, cfg.feature_space, cfg.seed)
    chosen = idx[SELECTORS[cfg.method](feats, n, g)]
    return run.train.images[chosen], [{"source": "real", "index": int(i)} for i in chosen], stats


def _dope(run: _Run, entries_by_class: dict[int, list[dict]], class_names: list[str]) -> dict[int, list[dict]]:
    """Add the lowest-clarity real images; rewrites each class folder with synthetic + real."""
    cfg, train = run.cfg, run.train
    num_syn = sum(len(v) for v in entries_by_class.values())
    count = real_count(cfg.doping, len(train), len(class_names), num_syn)
    syn_entries = [e for label in sorted(entries_by_class) for e in entries_by_class[label]]
    synthetic = ImageSet(read_images(run.work, syn_entries), torch.tensor([e["label"] for e in syn_entries]), class_names)
    teacher_dir = Path(cfg.doping.teacher) if cfg.doping.teacher else default_teacher_dir(cfg.dataset)
    teacher = ensure_teacher(
        teacher_dir, train,
        lambda: load_dataset(cfg.dataset, "test", data_root=cfg.data_root, test_path=cfg.test_dataset, on_bad_image=cfg.on_bad_image),
        TeacherConfig(cfg.dataset, cfg.seed, cfg.doping_protocol), run.progress,
    )
    teacher_labels = predict_proba(teacher, train.images).argmax(1)
    if cfg.doping.selector == "clarity":
        doping_model = train_classifier(synthetic, cfg.doping_protocol, cfg.seed, teacher, run.progress)
        scores = clarity(predict_proba(doping_model, train.images), teacher_labels)
    else:
        scores = torch.rand(len(train), generator=torch.Generator().manual_seed(cfg.seed))
    chosen = select(scores, train.labels, count, len(class_names), cfg.doping.classwise)
    out: dict[int, list[dict]] = {}
    for label, name in enumerate(class_names):
        mine = chosen[train.labels[chosen] == label]
        syn = [e for e in entries_by_class[label] if e["source"] == "synthetic"]
        images = torch.cat([read_images(run.work, syn), train.images[mine]]) if syn else train.images[mine]
        sources = [{"source": "synthetic"} for _ in syn] + [
            {"source": "real", "index": int(i), "clarity": float(scores[i])} for i in mine
        ]
        out[label] = write_class_images(run.work, name, label, images, sources)
    return out


def concentrate(
    config: ConcentrateConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    train: Optional[ImageSet] = None,
    backend: Optional[DiffusionBackend] = None,
) -> Path:
    """Run a method and write its output set to `config.out`; returns that path.

    `train` and `backend` may be passed in (a notebook, a test); otherwise they are loaded from
    the config. The data-free method reads no real image unless Doping asks for them.
    """
    cfg = config.resolved()
    out = Path(cfg.out)
    if out.exists():
        if resume and (out / "manifest.json").is_file():
            return out
        raise DscoError(f"output directory {out} already exists: choose another --out or delete it")
    needs_real = cfg.method != "dsco-datafree" or cfg.doping.enabled
    if not needs_real:
        train = None  # the data-free mode never touches real images, even when handed some
    elif train is None:
        train = load_dataset(cfg.dataset, "train", data_root=cfg.data_root, on_bad_image=cfg.on_bad_image)
    if cfg.method in DIFFUSION_METHODS and backend is None:
        backend = PixelBackend.load(cfg.model or default_model_dir(cfg.dataset), cfg.sampling_steps, cfg.guidance)
    class_names = list(train.class_names) if train is not None else list(backend.config.class_names)
    if backend is not None:
        _check_backend(backend, class_names, train.image_shape if train is not None else backend.sample_shape)
    if train is not None and cfg.method not in DIFFUSION_METHODS:
        for label, count in enumerate(train.class_counts()):
            if count < cfg.ipc:
                raise DscoError(f"IPC {cfg.ipc} is more than the {count} real images of class {class_names[label]!r}")
    run = _Run(cfg, train, backend, resume, progress)
    phi_shared = None
    if cfg.method == "dsco-datafree":
        phi_shared = RandomFeatureNet(backend.sample_shape[0], cfg.nopt.feature_width, seed=cfg.seed)
    entries: dict[int, list[dict]] = {}
    class_stats: dict[str, Any] = {}
    for label, name in enumerate(tqdm(class_names, desc=f"{cfg.method} ipc {cfg.ipc}", disable=not progress)):
        rec = run.done(name)
        if rec is None:
            t0 = time.perf_counter()
            images, sources, stats = _synthesise_class(run, label, name, phi_shared)
            stats["seconds"] = round(time.perf_counter() - t0, 3)
            rec = {"entries": write_class_images(run.work, name, label, images, sources), "stats": stats}
            atomic_write_json(run.class_record(name), rec)
        entries[label], class_stats[name] = rec["entries"], rec["stats"]
    if cfg.doping.enabled:
        entries = _dope(run, entries, class_names)
    manifest = {
        "format": FORMAT,
        "dataset": cfg.dataset,
        "class_names": class_names,
        "method": cfg.method + ("+doping" if cfg.doping.enabled else ""),
        "seed": cfg.seed,
        "config": asdict(cfg),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "synthesis_seconds": round(sum(s["seconds"] for s in class_stats.values()), 3),
        "counts": [len(entries[label]) for label in range(len(class_names))],
        "class_stats": class_stats,
        "images": [e for label in range(len(class_names)) for e in entries[label]],
    }
    atomic_write_json(run.work / "manifest.json", manifest)
    shutil.rmtree(run.work / "classes")
    (run.work / "run.json").unlink()
    run.work.rename(out)
    return out
