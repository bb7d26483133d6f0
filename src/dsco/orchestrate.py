"""`dsco concentrate`: per class, resumable orchestration of every method into one output set."""
from __future__ import annotations

import hashlib
import logging
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

from .methods.dm import DMConfig
from .cache import cache_dir, cached
from .data import DATASET_NAMES, IMAGENET_NAMES, ImageSet, LazyImageSet, load_dataset
from .data.imagenet import class_labels, imagenet_index, subset_wnids
from .datafree import DataFreeConfig
from .doping import DOPING_SELECTORS, DopingConfig, clarity, real_count, select
from .errors import DscoError
from .evaluate import PROTOCOLS, EvalProtocol, TeacherConfig, ensure_teacher, predict_by_class, train_classifier
from .fsio import atomic_write_json, safe_name
from .methods.selection import random_subset
from .methods import METHOD_FIELDS, ClassTask, D3HRConfig, D4MConfig, IGDConfig, MGD3Config, MinimaxConfig, method_named
from .models.diffusion import DiffusionBackend
from .models.loading import default_guidance, load_backend
from .nopt import NOptConfig
from .outputset import FORMAT, read_images, read_manifest, write_class_images
from .parallel import barrier, join

log = logging.getLogger(__name__)
FEATURE_SPACES = ("pixels", "random-conv")
SCHEDULES = ("reference", "short")
# a preset's earlier name, read as the preset (runs and bench cells recorded before the rename): "budget" now means
# only a Doping size, as a fraction of the train split
RENAMED_SCHEDULES = {"budget": "short"}
MNIST5K_SCHEDULE = "short"  # the embedded default's preset: <= 2x plain sampling, the README run takes minutes
OPTIONAL_KNOBS = ("vae", "bf16", "guidance_channels", "class_map", "device", "synthetic_set", "num_heads", "diffusers_embedding")


def nopt_preset(name: str) -> NOptConfig:
    """`reference`: the authors' schedule. `short` (ours, the mnist5k default): 10 Adam iterations on a 64-wide
    phi, one noising of 50 targets, the noisiest half of the steps, targets noised to the matched step;
    about 1.8x plain sampling on mnist5k (benchmarks/nopt_cost.py). Any other setting is reachable through the
    knobs; results/mnist5k/ablation.md records which knobs made which row."""
    name = RENAMED_SCHEDULES.get(name, name)
    if name == "reference":
        return NOptConfig()
    if name == "short":
        return NOptConfig(iterations=10, feature_width=64, k_noises=1, max_targets=50, target_offset=0,
                          optimizer="adam", lr=0.05, steps_fraction=0.5)
    raise DscoError(f"unknown NOpt schedule {name!r}: valid names are {', '.join(SCHEDULES)}")


def default_schedule(dataset: str) -> str:
    """The authors' schedule everywhere except the embedded mnist5k, whose preset is ours (MNIST5K_SCHEDULE)."""
    return MNIST5K_SCHEDULE if dataset == "mnist5k" else "reference"


def default_doping_protocol(dataset: str) -> str:
    """The doping model trains as the dataset's sets are evaluated: the paper's protocol on ImageNet data."""
    return "imagenet-subset" if dataset in IMAGENET_NAMES else "cpu-small"


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
    guidance: Optional[float] = None  # None = the model's own: 2.0 for pixel models, 4.0 for DiT
    vae: Optional[str] = None  # DiT only: VAE directory or hub id (default: the DiT directory's vae/)
    bf16: bool = False  # DiT only: bf16 autocast for the transformer and the VAE decoder
    guidance_channels: Optional[int] = None  # DiT only: guide the first C latent channels (None = DiT's 3)
    diffusers_embedding: bool = False  # DiT only: keep diffusers' timestep embedding and norm eps instead of DiT's
    num_heads: Optional[int] = None  # DiT checkpoint files only: attention heads when the width is not DiT-S/B/L/XL
    class_map: Optional[str] = None  # JSON file {class folder name: model label}
    latent_cache: Optional[str] = None  # DiT only: where real-image latents are cached (None = ~/.cache/dsco/latents)
    device: Optional[str] = None  # None = cuda (this rank's GPU) when available, else cpu
    class_batch: int = 1  # classes synthesised together by a method that batches them (dsco, diffusion): a GPU's batch
    compile: bool = False  # DiT only: torch.compile the transformer
    synthetic_set: Optional[str] = None  # Doping: take the synthetic part from this output set instead of synthesising
    schedule: Optional[str] = None  # NOpt preset the `nopt` field starts from; None = default_schedule(dataset)
    nopt: Optional[NOptConfig] = None  # None = the preset
    datafree: DataFreeConfig = field(default_factory=DataFreeConfig)
    doping: DopingConfig = field(default_factory=DopingConfig)
    doping_protocol: EvalProtocol = field(default_factory=EvalProtocol)
    feature_space: str = "random-conv"
    dm: DMConfig = field(default_factory=DMConfig)
    d4m: D4MConfig = field(default_factory=D4MConfig)
    igd: IGDConfig = field(default_factory=IGDConfig)
    minimax: MinimaxConfig = field(default_factory=MinimaxConfig)
    d3hr: D3HRConfig = field(default_factory=D3HRConfig)
    mgd3: MGD3Config = field(default_factory=MGD3Config)
    data_root: Optional[str] = None
    download: bool = False  # let torchvision download the dataset into data_root (cannot change the set)
    preflight: int = 0  # plain samples per class compared with the real classes before synthesis (0 = no check)
    test_dataset: Optional[str] = None
    on_bad_image: str = "fail"

    def resolved(self) -> "ConcentrateConfig":
        """Validate names and ranges, and fill the NOpt knobs from the preset."""
        method_named(self.method)
        if self.feature_space not in FEATURE_SPACES:
            raise DscoError(f"unknown feature space {self.feature_space!r}: valid names are {', '.join(FEATURE_SPACES)}")
        if self.doping.selector not in DOPING_SELECTORS:
            raise DscoError(f"unknown doping selector {self.doping.selector!r}: valid names are {', '.join(DOPING_SELECTORS)}")
        if not isinstance(self.ipc, int) or self.ipc <= 0:
            raise DscoError(f"IPC must be a positive integer, got {self.ipc}")
        if not isinstance(self.class_batch, int) or self.class_batch < 1:
            raise DscoError(f"--class-batch must be a positive integer, got {self.class_batch}")
        schedule = RENAMED_SCHEDULES.get(self.schedule or "", self.schedule) or default_schedule(self.dataset)
        nopt = self.nopt if self.nopt is not None else nopt_preset(schedule)
        nopt.validate()
        templates = self.datafree.templates or (200 if schedule == "reference" else 20)
        if templates < 1:
            raise DscoError(f"data-free templates must be >= 1, got {templates}")
        guidance = self.guidance
        if guidance is None:
            guidance = default_guidance(self.model) if self.model else 2.0
        doping, folder = self.doping, self.dataset not in DATASET_NAMES
        if doping.classwise is None:
            doping = replace(doping, classwise=folder)
        if doping.guard is None:
            doping = replace(doping, guard=folder)
        return replace(self, schedule=schedule, nopt=nopt, datafree=replace(self.datafree, templates=templates), guidance=guidance,
                       doping=doping)

    def model_source(self) -> str:
        return str(self.model or default_model_dir(self.dataset))


def with_later_defaults(made_with: dict[str, Any]) -> dict[str, Any]:
    """A recorded configuration (a bench cell's, an interrupted run's) with option fields added since it was
    written read as their defaults (what the code did before they existed): adding an option orphans nothing."""
    defaults = {"protocol": EvalProtocol(), "doping_protocol": EvalProtocol(), "nopt": NOptConfig()}
    out = dict(made_with)
    if out.get("schedule") in RENAMED_SCHEDULES:
        out["schedule"] = RENAMED_SCHEDULES[out["schedule"]]
    for key, default in defaults.items():
        if isinstance(out.get(key), dict):
            out[key] = {**json.loads(json.dumps(asdict(default))), **out[key]}
    if "method" in out and "out" in out:  # a whole run's record: top-level fields added later, at their defaults
        out = {**json.loads(json.dumps(asdict(ConcentrateConfig()))), **out}
    return out


def determining(cfg: ConcentrateConfig) -> dict[str, Any]:
    """The config fields that can change the set `cfg` builds (another method's knobs dropped)."""
    d = asdict(cfg)
    d.pop("latent_cache")
    d.pop("download")
    d.pop("preflight")  # a check, not part of what the set is
    d.pop("class_batch")  # how many classes share the model's calls: float rounding, not what the set is
    d.pop("compile")  # likewise
    for key in OPTIONAL_KNOBS:  # an unset optional knob means the model's own behaviour: no change to the set
        if d[key] in (None, False):
            d.pop(key)
    if cfg.synthetic_set:
        d["synthetic_set_config"] = read_manifest(cfg.synthetic_set)["config"]
    used = method_named(cfg.method).config_fields
    for key in METHOD_FIELDS:  # another method's knobs cannot change this set
        if key not in used:
            d.pop(key)
    if not cfg.doping.enabled:
        d.pop("doping")
        d.pop("doping_protocol")
    return d


def _class_seed(seed: int, label: int) -> int:
    return seed * 1_000_003 + label


def image_shape_of(backend: DiffusionBackend) -> tuple[int, ...]:
    """The decoded image shape: the sample shape for pixel models, (3, S, S) for latent ones."""
    return tuple(backend.image_shape)


def model_labels(class_names: list[str], backend: DiffusionBackend, class_map: Optional[str]) -> list[int]:
    """The diffusion model's label for each dataset class: --class-map, else ImageNet wnids, else the same index."""
    return class_labels(class_names, backend.num_classes, class_map)


def _check_backend(backend: DiffusionBackend, shape: tuple[int, ...]) -> None:
    if image_shape_of(backend) != tuple(shape):
        raise DscoError(f"the diffusion model makes {image_shape_of(backend)} images but the dataset's images are {tuple(shape)}")


def _datafree_class_names(cfg: ConcentrateConfig, backend: DiffusionBackend) -> list[str]:
    """Class names without reading data: a named ImageNet subset, the model's own list, or 0..K-1."""
    if cfg.dataset in IMAGENET_NAMES:
        return list(subset_wnids(cfg.dataset))
    names = list(backend.class_names)
    if names:
        return names
    if backend.num_classes == 1000:
        return list(imagenet_index()[0])
    return [str(i) for i in range(backend.num_classes)]


class _Run:
    """State of one run: the work directory beside `out`, its finished classes, and the inputs."""

    def __init__(self, cfg: ConcentrateConfig, train, backend: Optional[DiffusionBackend], resume: bool, progress: bool, rank: int = 0):
        self.cfg, self.train, self.backend, self.progress = cfg, train, backend, progress
        self.labels: list[int] = []  # the model's label per dataset class
        self.synthetic: Optional[dict[str, Any]] = None  # the --synthetic-set manifest, read once
        self.method = method_named(cfg.method)
        self.class_names: list[str] = []
        self.shared: dict[str, Any] = {}  # the method's per-run state
        self.preflight: Optional[dict[str, Any]] = None  # the pre-flight check's report (rank 0)
        self.doping_guard: Optional[dict[str, Any]] = None  # Doping's guard: both accuracies and its verdict
        self.out = Path(cfg.out)
        self.work = self.out.parent / f".{self.out.name}.work"
        saved = self.work / "run.json"
        record = {"config": asdict(cfg)}
        if self.work.exists() and not resume:
            raise DscoError(f"an interrupted run is in {self.work}: pass --resume to continue it, or delete it")
        if resume and saved.is_file():
            if with_later_defaults(json.loads(saved.read_text())["config"]) != json.loads(json.dumps(record["config"])):
                raise DscoError(f"--resume: the run in {self.work} used a different configuration")
        barrier()  # every rank has checked before rank 0 creates the work directory
        if rank == 0 and not saved.is_file():
            atomic_write_json(saved, record)
        barrier()

    def class_record(self, name: str) -> Path:
        return self.work / "classes" / f"{safe_name(name)}.json"

    def done(self, name: str) -> Optional[dict[str, Any]]:
        p = self.class_record(name)
        return json.loads(p.read_text()) if p.is_file() else None


def _class_task(run: _Run, label: int, name: str) -> ClassTask:
    cfg = run.cfg
    seed = _class_seed(cfg.seed, label)
    return ClassTask(
        cfg=cfg, label=label, name=name, n=cfg.ipc, generator=torch.Generator().manual_seed(seed), class_seed=seed,
        backend=run.backend, model_label=run.labels[label] if run.labels else None,
        real_images=lambda: run.train.class_images(label), real_indices=lambda: run.train.indices_of(label),
        real_targets=lambda: _class_targets(run, label, name), train=lambda: run.train, shared=run.shared,
        targets_of=lambda c: _class_targets(run, c, run.class_names[c]), num_classes=len(run.class_names),
        model_labels=run.labels, progress=run.progress,
    )


def _synthesise_classes(run: _Run, labels: list[int]) -> list[tuple[torch.Tensor, list[dict], dict]]:
    """Some classes' images in [0, 1], their manifest sources, and each class's record."""
    cfg, n = run.cfg, run.cfg.ipc
    names = [run.class_names[label] for label in labels]
    if run.synthetic is not None:
        out = []
        for label, name in zip(labels, names):
            mine = [e for e in run.synthetic["images"] if e["label"] == label and e["source"] == "synthetic"]
            if len(mine) != n:
                raise DscoError(f"--synthetic-set {cfg.synthetic_set} has {len(mine)} synthetic images of class {name!r}, not IPC {n}")
            out.append((read_images(Path(cfg.synthetic_set), mine), [{"source": "synthetic"} for _ in range(n)],
                        {"synthetic_set": cfg.synthetic_set}))
        return out
    tasks = [_class_task(run, label, name) for label, name in zip(labels, names)]
    made = run.method.synthesise_classes(tasks)
    return [(o.images, o.sources, o.stats) for o in made]


def _class_targets(run: _Run, label: int, name: str) -> torch.Tensor:
    """A class's real images in model space; for latent models encoded once and cached on disk."""
    backend = run.backend
    vae_key = backend.target_cache_key()
    if vae_key is None:
        return backend.encode(run.train.class_images(label))
    root = cache_dir("latents", run.cfg.latent_cache)
    if isinstance(run.train, LazyImageSet):
        data_key, images = run.train.class_fingerprint(label), None
    else:
        images = run.train.class_images(label)
        data_key = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
    path = root / safe_name(run.train.name or "dataset") / vae_key / f"{safe_name(name)}-{data_key}.safetensors"
    return cached(path, lambda: {"latents": backend.encode(images if images is not None else run.train.class_images(label))})[0]["latents"]


def _dope(run: _Run, entries_by_class: dict[int, list[dict]], class_names: list[str]) -> dict[int, list[dict]]:
    """Add the lowest-clarity real images; rewrites each class folder with synthetic + real."""
    cfg, train = run.cfg, run.train
    num_syn = sum(len(v) for v in entries_by_class.values())
    count = real_count(cfg.doping, len(train), len(class_names), num_syn, train.class_counts(), quiet=True)
    syn_entries = [e for label in sorted(entries_by_class) for e in entries_by_class[label]]
    synthetic = ImageSet(read_images(run.work, syn_entries), torch.tensor([e["label"] for e in syn_entries]), class_names)
    teacher_dir = Path(cfg.doping.teacher) if cfg.doping.teacher else default_teacher_dir(cfg.dataset)
    teacher = ensure_teacher(
        teacher_dir, train,
        lambda: load_dataset(cfg.dataset, "test", data_root=cfg.data_root, download=cfg.download, test_path=cfg.test_dataset,
                             on_bad_image=cfg.on_bad_image),
        TeacherConfig(cfg.dataset, cfg.seed, cfg.doping_protocol), run.progress, cfg.class_map,
    )
    proto, size = cfg.doping_protocol, cfg.doping_protocol.image_size
    guard = cfg.doping.guard and cfg.doping.selector == "clarity"
    if cfg.doping.selector == "clarity":
        nets = [teacher, train_classifier(synthetic, proto, cfg.seed, teacher, run.progress)]
        if guard:
            # the guard's two networks learn from hard labels: the teacher's soft labels make any set look good on
            # easy data (100 synthetic printed digits: 99.9 % with them, level with real images; 75.9 % without)
            seen = _random_real(train, num_syn, cfg.seed + 1)
            nets += [train_classifier(synthetic, proto, cfg.seed, None, run.progress),
                     train_classifier(train.subset(seen), proto, cfg.seed, None, run.progress)]
        probs = predict_by_class(nets, train, size)  # every net in one pass over the train split
        scores = clarity(probs[1], probs[0].argmax(1))
    else:
        scores = torch.rand(len(train), generator=torch.Generator().manual_seed(cfg.seed))
    chosen = select(scores, train.labels, count, len(class_names), cfg.doping.classwise)
    keep = True
    if guard:
        keep, run.doping_guard = _synthetic_earns_its_place(probs[2], probs[3], seen, train.labels, num_syn + count)
        if not keep:  # the budget in class-balanced random real images: the `random` method's set of that size
            chosen = _random_real(train, num_syn + count, cfg.seed)
    out: dict[int, list[dict]] = {}
    for label, name in enumerate(class_names):
        mine = chosen[train.labels[chosen] == label]
        syn = [e for e in entries_by_class[label] if e["source"] == "synthetic"] if keep else []
        real = train.subset(mine).images  # only the chosen files are read on a lazy (ImageNet) split
        images = torch.cat([read_images(run.work, syn), real]) if syn else real
        sources = [{"source": "synthetic"} for _ in syn] + [
            {"source": "real", "index": int(i), "clarity": float(scores[i])} for i in mine
        ]
        out[label] = write_class_images(run.work, name, label, images, sources)
    return out


def _random_real(train, total: int, seed: int) -> torch.Tensor:
    """`total` real train indices, an equal share a class (the remainder to the first classes), each class's drawn as
    the `random` method draws it with this seed and kept in its order: with a share of n a class, exactly
    `--method random --ipc n`'s set, image for image."""
    k, chosen = train.num_classes, []
    for c in range(k):
        idx = train.indices_of(c)
        share = total // k + (1 if c < total % k else 0)
        if share:
            chosen.append(idx[random_subset(idx, share, torch.Generator().manual_seed(_class_seed(seed, c)))])
    return torch.cat(chosen)


def _synthetic_earns_its_place(synthetic_probs: torch.Tensor, real_probs: torch.Tensor, seen: torch.Tensor,
                               labels: torch.Tensor, total: int) -> tuple[bool, dict[str, Any]]:
    """Doping's guard (ours): the accuracy on the real train split of a network trained on the synthetic images
    (`synthetic_probs`, its outputs there) against that of the same network trained (same protocol and seed) on as
    many class-balanced random real images (`real_probs`; `seen`, the images it trained on, are left out), both with
    hard labels, so what is compared is what the images themselves teach. The synthetic images stay when they train
    at least as well; otherwise the set becomes `total` random real images."""
    num_syn = len(seen)
    synthetic_acc = (synthetic_probs.argmax(1) == labels).float().mean().item()
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[seen] = False
    real_acc = (real_probs.argmax(1)[rest] == labels[rest]).float().mean().item()
    keep = synthetic_acc >= real_acc
    if not keep:
        log.warning("Doping: a model trained on the %d synthetic images scores %.1f %% on the real train split, one trained "
                    "on %d random real images %.1f %%: the set is %d class-balanced random real images instead "
                    "(--no-doping-guard keeps the synthetic ones)", num_syn, synthetic_acc * 100, num_syn, real_acc * 100, total)
    return keep, {"synthetic_accuracy": round(synthetic_acc, 4), "real_accuracy": round(real_acc, 4), "kept_synthetic": keep}


def _preflight(cfg: ConcentrateConfig, backend: DiffusionBackend, train) -> Optional[dict[str, Any]]:
    """`dsco check` before synthesis: how far the model's plain samples are from each real class (recorded in the
    manifest; one warning line when far). Needs the model, the real classes in memory, and a teacher trained on
    them (cached beside the others)."""
    if not isinstance(train, ImageSet):
        return None  # a lazily read (ImageNet-layout) split: the check would read it all
    from .preflight import advice, check_generator

    teacher_dir = default_teacher_dir(cfg.dataset).with_name(default_teacher_dir(cfg.dataset).name + "-preflight")
    if cfg.test_dataset or cfg.dataset in DATASET_NAMES:
        test = lambda: load_dataset(cfg.dataset, "test", data_root=cfg.data_root, download=cfg.download,  # noqa: E731
                                    test_path=cfg.test_dataset, on_bad_image=cfg.on_bad_image)
    else:  # a folder without a test split: the teacher's recorded accuracy is then on its own train split
        test = lambda: train  # noqa: E731
    teacher = ensure_teacher(teacher_dir, train, test, TeacherConfig(cfg.dataset, 0, PROTOCOLS["cpu-small"]), False, cfg.class_map)
    if not hasattr(teacher, "embed"):
        return None  # an ImageNet weights file: no feature space of this data to compare in
    labels = model_labels(list(train.class_names), backend, cfg.class_map)
    report = check_generator(backend, train, teacher, f"teacher {teacher_dir}", cfg.preflight, cfg.seed, labels)
    line = advice(report)
    if line:
        log.warning("warning: %s", line)
    return {k: report[k] for k in ("overall", "per_class", "far", "worst_classes", "thresholds", "per_class_samples")}


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
    rank, world = join()
    progress = progress and rank == 0
    synthetic = None
    if cfg.synthetic_set:
        if not cfg.doping.enabled:
            raise DscoError("--synthetic-set only supplies the synthetic part of a doped set: add --doping-ipc or --budget")
        synthetic = read_manifest(cfg.synthetic_set)
        if synthetic["dataset"] != cfg.dataset:
            raise DscoError(f"--synthetic-set {cfg.synthetic_set} was made from another dataset")
    method = method_named(cfg.method)
    if method.uses_model and backend is None and synthetic is None:
        backend = load_backend(cfg.model_source(), cfg.sampling_steps, cfg.guidance, vae=cfg.vae, bf16=cfg.bf16, compile=cfg.compile,
                               guidance_channels=cfg.guidance_channels, device=cfg.device, num_heads=cfg.num_heads,
                               embedding="diffusers" if cfg.diffusers_embedding else "dit")
    if backend is not None and synthetic is None:
        method.check(backend)  # before any image is read or encoded
    # the pre-flight check compares plain samples with the real classes; the data-free mode reads none
    check = bool(cfg.preflight) and method.uses_model and synthetic is None and method.name != "dsco-datafree"
    needs_real = method.reads_real or cfg.doping.enabled or check
    if not needs_real:
        train = None  # the data-free mode never touches real images, even when handed some
    elif train is None:
        size = image_shape_of(backend)[-1] if backend is not None and backend.kind == "latent" else None
        train = load_dataset(cfg.dataset, "train", data_root=cfg.data_root, download=cfg.download, on_bad_image=cfg.on_bad_image, image_size=size)
    class_names = list(train.class_names) if train is not None else _datafree_class_names(cfg, backend)
    if backend is not None and train is not None:
        _check_backend(backend, train.image_shape)
    if cfg.doping.enabled:  # every doping setting checked now, not after hours of synthesis
        real_count(cfg.doping, len(train), len(class_names), cfg.ipc * len(class_names), train.class_counts())
    if train is not None and not method.uses_model:
        for label, count in enumerate(train.class_counts()):
            if count < cfg.ipc:
                raise DscoError(f"IPC {cfg.ipc} is more than the {count} real images of class {class_names[label]!r}")
    preflight = _preflight(cfg, backend, train) if check and rank == 0 else None
    run = _Run(cfg, train, backend, resume, progress, rank)
    run.preflight = preflight
    run.class_names = class_names
    if backend is not None:
        run.labels = model_labels(class_names, backend, cfg.class_map)
    if synthetic is not None and synthetic["class_names"] != class_names:
        raise DscoError(f"--synthetic-set {cfg.synthetic_set} has other classes than the dataset")
    run.synthetic = synthetic
    mine = [label for label in range(len(class_names)) if label % world == rank]  # classes are independent
    pending = [label for label in mine if run.done(class_names[label]) is None]
    batch = cfg.class_batch if run.method.batches_classes and synthetic is None else 1
    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=f"{cfg.method} ipc {cfg.ipc}", disable=not progress)
    for start in range(0, len(pending), batch):
        group = pending[start : start + batch]
        t0 = time.perf_counter()
        made = _synthesise_classes(run, group)
        seconds = round((time.perf_counter() - t0) / len(group), 3)
        for label, (images, sources, stats) in zip(group, made):
            name = class_names[label]
            stats["seconds"] = seconds  # a batch's time shared equally between its classes
            if len(group) > 1:
                stats["class_batch"] = len(group)
            rec = {"entries": write_class_images(run.work, name, label, images, sources), "stats": stats}
            atomic_write_json(run.class_record(name), rec)
        bar.update(len(group))
    bar.close()
    barrier()  # every rank's classes are on disk
    if rank != 0:
        barrier()  # rank 0 merges
        return out
    try:
        return _finish(run, class_names)
    finally:
        barrier()


def _finish(run: _Run, class_names: list[str]) -> Path:
    """Rank 0: gather the class records, dope if asked, write the manifest, rename into place."""
    cfg, out = run.cfg, Path(run.cfg.out)
    entries: dict[int, list[dict]] = {}
    class_stats: dict[str, Any] = {}
    for label, name in enumerate(class_names):
        rec = run.done(name)
        if rec is None:
            raise DscoError(f"class {name!r} has no finished record in {run.work}")
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
        # where the model ran: a GPU's arithmetic (and NOpt's target noise, drawn there) gives another set than a CPU's
        "device": str(run.backend.device) if run.backend is not None else None,
        "synthesis_seconds": round(sum(s["seconds"] for s in class_stats.values()), 3),
        # work a method read from its cache instead of redoing (D3HR's inversion, Minimax's fine-tuning), in the
        # seconds it took when it was done: synthesis_seconds + reused_seconds is the set's cost from scratch
        "reused_seconds": round(sum(s.get("reused_seconds", 0.0) for s in class_stats.values()), 3),
        "counts": [len(entries[label]) for label in range(len(class_names))],
        "class_stats": class_stats,
        "images": [e for label in range(len(class_names)) for e in entries[label]],
    }
    if run.preflight is not None:
        manifest["preflight"] = run.preflight
    if run.doping_guard is not None:
        manifest["doping_guard"] = run.doping_guard
    atomic_write_json(run.work / "manifest.json", manifest)
    shutil.rmtree(run.work / "classes")
    (run.work / "run.json").unlink()
    run.work.rename(out)
    return out
