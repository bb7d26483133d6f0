"""Thin command-line layer over the Python API; every error is one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from .errors import DscoError


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist5k", help="mnist5k (embedded), mnist, fashion-mnist, cifar10, cifar100, "
                   "imagenette, imagewoof, imagenet1k (ImageNet layout under --data-root), or an ImageFolder path")
    p.add_argument("--test-dataset", default=None, help="ImageFolder path of the test split (with a folder --dataset)")
    p.add_argument("--data-root", default=None, help="root of a torchvision dataset, or of an ImageNet-layout folder (train/<wnid>, val/<wnid>)")
    p.add_argument("--download", action="store_true", help="let torchvision download into --data-root")
    p.add_argument("--on-bad-image", choices=["fail", "skip"], default="fail")


def _protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", default="cpu-small", help="cpu-small (ours, small images on CPU), cpu-resnet18 "
                   "(ours, ResNet-18 at batch 32), imagenet-subset (the paper's ImageNette/ImageWoof protocol: "
                   "ResNetAP-10 at 224 px, epochs by IPC) or imagenet1k")
    p.add_argument("--arch", default=None, help="override the protocol's architecture: convnet3, convnet6, convnet3-bn, resnet18, resnetap10")
    p.add_argument("--width", type=int, default=None, help="override the ConvNet channels (cpu-small: 32; the field: 128)")
    p.add_argument("--max-steps", type=int, default=None, help="cap the classifier's training steps")


def _protocol(a: argparse.Namespace):
    from dataclasses import replace

    from .evaluate import protocol_named

    p = protocol_named(a.protocol)
    overrides = {k: getattr(a, k) for k in ("arch", "width", "max_steps") if getattr(a, k) is not None}
    return replace(p, **overrides)


def _load(a: argparse.Namespace, split: str):
    from .data import load_dataset

    return load_dataset(a.dataset, split, data_root=a.data_root, download=a.download,
                        test_path=a.test_dataset, on_bad_image=a.on_bad_image)


def _train_model_config(a: argparse.Namespace):
    from .models.pixel import PixelModelConfig
    from .train_model import TrainModelConfig

    model = PixelModelConfig(image_size=a.image_size, block_out_channels=tuple(a.channels),
                             layers_per_block=a.layers_per_block, attention=a.attention)
    given = {k: getattr(a, k) for k in ("steps", "batch_size", "lr", "checkpoint_every") if getattr(a, k) is not None}
    return TrainModelConfig(
        dataset=a.dataset, out=a.out, seed=a.seed, resume=a.resume, data_root=a.data_root, model=model,
        snapshot_steps=tuple(a.snapshot_steps), device=a.device, **given,
    )


def _train_model(a: argparse.Namespace) -> None:
    from .train_model import train_model

    print(train_model(_train_model_config(a)))


def _run_fields(a: argparse.Namespace) -> dict:
    """The options `concentrate` and `sample` share: data, output, model and sampler."""
    return dict(
        dataset=a.dataset, out=a.out, ipc=a.ipc, seed=a.seed, model=a.model, sampling_steps=a.sampling_steps,
        guidance=a.guidance, vae=a.vae, bf16=a.bf16, guidance_channels=a.guidance_channels, class_map=a.class_map,
        diffusers_embedding=a.diffusers_embedding, num_heads=a.num_heads, latent_cache=a.latent_cache, device=a.device,
        data_root=a.data_root, download=a.download, test_dataset=a.test_dataset, on_bad_image=a.on_bad_image,
        preflight=_preflight_samples(a), class_batch=a.class_batch, compile=a.compile,
    )


def _preflight_samples(a: argparse.Namespace) -> int:
    """--preflight, or by default 20 samples per class on a folder of the user's (a generator may never have seen
    it) and none on the named datasets the shipped and ImageNet models were trained on."""
    from .data import DATASET_NAMES

    return a.preflight if a.preflight is not None else (0 if a.dataset in DATASET_NAMES else 20)


def _sample_config(a: argparse.Namespace):
    from .orchestrate import ConcentrateConfig

    return ConcentrateConfig(method="diffusion", **_run_fields(a))


def _concentrate_config(a: argparse.Namespace):
    from dataclasses import replace

    from .orchestrate import ConcentrateConfig, default_doping_protocol, default_schedule, nopt_preset
    from .datafree import DataFreeConfig
    from .doping import DopingConfig
    from .evaluate import protocol_named
    from .methods import REGISTRY
    from .options import dataclass_from_options

    schedule = a.schedule or default_schedule(a.dataset)
    nopt = nopt_preset(schedule)
    overrides = {k: getattr(a, k) for k in ("loss", "optimizer", "iterations", "lr", "momentum", "k_noises", "target_offset",
                                             "feature_width", "max_targets", "early_stop", "steps_fraction", "steps_start", "std_floor",
                                             "anchor", "anchor_t")
                 if getattr(a, k, None) is not None}
    doping = DopingConfig(doping_ipc=a.doping_ipc, budget=a.budget, classwise=a.classwise, guard=a.doping_guard,
                          selector=a.selector, teacher=a.teacher)
    return ConcentrateConfig(
        method="dsco-datafree" if a.data_free else a.method, schedule=schedule, nopt=replace(nopt, **overrides),
        synthetic_set=a.synthetic_set, doping_protocol=protocol_named(a.doping_protocol or default_doping_protocol(a.dataset)),
        datafree=DataFreeConfig(templates=a.templates), doping=doping, feature_space=a.feature_space,
        **{name: dataclass_from_options(a, m.options, name) for name, m in REGISTRY.items() if m.options},
        **_run_fields(a),
    )


def _concentrate(a: argparse.Namespace) -> None:
    from .orchestrate import concentrate

    print(concentrate(_concentrate_config(a), resume=a.resume))


def _sample(a: argparse.Namespace) -> None:
    from .orchestrate import concentrate

    print(concentrate(_sample_config(a), resume=a.resume))


def _train_teacher(a: argparse.Namespace) -> None:
    from .evaluate import TeacherConfig, train_teacher

    acc = train_teacher(_load(a, "train"), _load(a, "test"), TeacherConfig(a.dataset, a.seed, _protocol(a)), a.out)
    print(f"teacher test accuracy {acc:.4f} -> {a.out}")


def _evaluate(a: argparse.Namespace) -> None:
    import statistics

    import torch

    from .evaluate import evaluate_set, load_teacher
    from .fsio import atomic_write_json
    from .outputset import load_output_set, read_manifest, schedule_ipc

    train_full, test = _load(a, "train"), _load(a, "test")
    if a.full:
        train = train_full
    elif a.set is None:
        raise DscoError("give an output set directory, or --full for the whole train split")
    else:
        train = load_output_set(a.set, dtype=torch.uint8)  # a large set is held as its PNG bytes, converted per batch
    from .parallel import join

    protocol = _protocol(a)
    labels = a.labels or protocol.labels
    if labels == "teacher" and not a.teacher:
        raise DscoError(f"the {a.protocol} protocol trains with teacher labels: pass --teacher DIR (dsco train-teacher) "
                        "or an ImageNet ResNet-18 weights file, or --labels hard to override it")
    rank, _ = join()  # under torchrun: DDP training, rank 0 reports
    teacher = load_teacher(a.teacher, train_full, a.class_map) if labels == "teacher" else None
    result = evaluate_set(train, test, protocol, a.runs, labels, teacher, progress=rank == 0, first_seed=a.first_seed,
                          ipc=None if a.full else schedule_ipc(read_manifest(a.set)))
    result.update({"set": "full" if a.full else a.set, "dataset": a.dataset})
    if rank == 0:
        other = "last" if result["report"] == "best" else "best"
        print(f"top-1 {result['mean'] * 100:.2f} ± {result['std'] * 100:.2f} % over {a.runs} runs ({len(train)} images, "
              f"{labels} labels, {result['report']} accuracy; {other}: "
              f"{statistics.fmean(result[other + '_accs']) * 100:.2f} %)")
        if a.json:
            atomic_write_json(a.json, result)


def _convert_dit(a: argparse.Namespace) -> None:
    from .models.latent import load_dit, save_dit

    transformer, vae, _, _ = load_dit(a.checkpoint, a.vae, a.num_heads)
    save_dit(transformer, vae, a.out)
    print(a.out)


def _verify(a: argparse.Namespace) -> None:
    from .outputset import verify

    problems = verify(a.set)
    if problems:
        raise DscoError(f"{a.set}: {len(problems)} problem(s): " + "; ".join(problems))
    print(f"{a.set}: ok")


def _bench_config(a: argparse.Namespace):
    from .bench import BenchConfig
    from .evaluate import protocol_named

    return BenchConfig(
        dataset=a.dataset, out=a.out, ipcs=[int(x) for x in a.ipc.split(",")], methods=a.methods.split(","),
        runs=a.runs, seed=a.seed, model=a.model, schedule=a.schedule, curve=a.curve, budgets=[float(x) for x in a.budgets.split(",")],
        curve_synthetic_ipc=a.curve_synthetic_ipc, protocol=_protocol(a), test_dataset=a.test_dataset,
        teacher=a.teacher, curve_labels=a.curve_labels.split(","),
        curve_synthetic_max_budget=a.curve_synthetic_max_budget, command=" ".join(["dsco", *sys.argv[1:]]),
        cached_only=a.cached_only, cross_protocol=protocol_named(a.cross_protocol) if a.cross_protocol else None,
        cross_ipc=a.cross_ipc, cross_methods=a.cross_methods.split(","),
        bn_protocol=None if a.bn_protocol == "none" else protocol_named(a.bn_protocol),
        generator_samples=a.generator_samples, lrs=not a.no_lrs, synthesis_seeds=a.synthesis_seeds,
        d3hr_candidates=a.d3hr_candidates or None, data_root=a.data_root, download=a.download, on_bad_image=a.on_bad_image,
    )


def _bench(a: argparse.Namespace) -> None:
    from .bench import bench

    print(bench(_bench_config(a)))


def _check(a: argparse.Namespace) -> None:
    from .data import LazyImageSet
    from .evaluate import TeacherConfig, ensure_teacher, protocol_named
    from .fsio import atomic_write_json
    from .models.loading import load_backend
    from .orchestrate import default_model_dir, default_teacher_dir, image_shape_of, model_labels
    from .preflight import Thresholds, advice, check_generator

    train = _load(a, "train")
    if isinstance(train, LazyImageSet):
        raise DscoError("dsco check reads the train split into memory; this split is read lazily (ImageNet layout): "
                        "point --dataset at a smaller ImageFolder of the same classes")
    backend = load_backend(a.model or default_model_dir(a.dataset), num_steps=a.sampling_steps, device=a.device)
    if tuple(image_shape_of(backend)) != tuple(train.image_shape):
        raise DscoError(f"the model makes {image_shape_of(backend)} images but the dataset's images are {train.image_shape}")
    teacher_dir = a.teacher or default_teacher_dir(a.dataset)
    teacher = ensure_teacher(teacher_dir, train, lambda: _load(a, "test"), TeacherConfig(a.dataset, 0, protocol_named("cpu-small")))
    if not hasattr(teacher, "embed"):
        raise DscoError("dsco check compares features: give a teacher trained with dsco train-teacher (a ConvNet), "
                        "not an ImageNet weights file")
    labels = model_labels(list(train.class_names), backend, a.class_map)
    report = check_generator(backend, train, teacher, f"teacher {teacher_dir}", a.per_class, a.seed, labels,
                             Thresholds(a.min_fidelity, a.min_coverage))
    print(f"{'class':>12} {'fidelity':>9} {'coverage':>9} {'FD':>8}")
    for name, m in report["per_class"].items():
        print(f"{name:>12} {m['fidelity']:>9.2f} {m['coverage']:>9.2f} {m['fd']:>8.2f}")
    o = report["overall"]
    print(f"{'overall':>12} {o['fidelity']:>9.2f} {o['coverage']:>9.2f} {o['fd']:>8.2f}")
    line = advice(report)
    print(f"dsco: warning: {line}" if line else "the model's plain samples are close to this data")
    if a.json:
        atomic_write_json(a.json, report)


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """Each registered method's own knobs, one group a method, generated from its options dataclass."""
    from .methods import REGISTRY
    from .options import add_dataclass_options

    for name, method in REGISTRY.items():
        if method.options is not None:
            add_dataclass_options(parser.add_argument_group(method.title or name), method.options, name)


def _subcommand(argv: list[str]) -> Optional[str]:
    return next((x for x in argv if not x.startswith("-")), None)


def build_parser(method_options: bool = False) -> argparse.ArgumentParser:
    """The whole command line; `method_options` adds every method's generated knobs to `concentrate` (it imports
    the methods, and with them PyTorch, so `dsco --help` leaves it out)."""
    from . import __version__

    p = argparse.ArgumentParser(prog="dsco", description="Dataset concentration with diffusion models (DsCo).")
    p.add_argument("--version", action="version", version=f"dsco {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train-model", help="train the class-conditional pixel diffusion model")
    t.add_argument("--dataset", default="mnist5k")
    t.add_argument("--data-root", default=None)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=None, help="training steps (default: TrainModelConfig's)")
    t.add_argument("--batch-size", type=int, default=None, help="(default: TrainModelConfig's)")
    t.add_argument("--lr", type=float, default=None, help="(default: TrainModelConfig's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--image-size", type=int, default=28)
    t.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64], help="UNet block widths")
    t.add_argument("--layers-per-block", type=int, default=1, help="ResNet layers in each UNet block")
    t.add_argument("--attention", action="store_true", help="self-attention at the lowest resolution")
    t.add_argument("--checkpoint-every", type=int, default=None, help="(default: TrainModelConfig's)")
    t.add_argument("--snapshot-steps", type=int, nargs="*", default=[],
                   help="also keep the EMA model at these steps, under OUT/snapshots/step-NNNNNN")
    t.add_argument("--device", default=None, help="cpu or cuda (default: the GPU if there is one)")
    t.add_argument("--resume", action="store_true")
    t.set_defaults(func=_train_model)

    for name, helptext, func in (("concentrate", "build a concentrated set (DsCo by default)", _concentrate),
                                 ("sample", "plain class-conditional sampling (the `diffusion` baseline)", _sample)):
        c = sub.add_parser(name, help=helptext)
        g = {key: c.add_argument_group(title) for key, title in (
            ("data", "data"), ("run", "output and run"), ("model", "diffusion model and sampler"))}
        if name == "concentrate":
            g.update({key: c.add_argument_group(title) for key, title in (
                ("method", "method"), ("nopt", "NOpt (dsco, dsco-datafree): a preset and its knobs"),
                ("doping", "Doping: real images added to the synthetic set"))})
            if method_options:
                _add_method_options(c)
        _data_args(g["data"])
        g["run"].add_argument("--out", required=True)
        g["run"].add_argument("--ipc", type=int, default=10, help="images per class")
        g["run"].add_argument("--seed", type=int, default=0)
        g["model"].add_argument("--model", default=None, help="pixel model directory (default: the shipped mnist5k model), "
                       "or a DiT: diffusers directory (DiTPipeline.save_pretrained), original DiT checkpoint file, or hub id")
        g["model"].add_argument("--sampling-steps", type=int, default=50)
        g["model"].add_argument("--guidance", type=float, default=None, help="CFG scale (default: 2.0 pixel models, 4.0 DiT)")
        g["model"].add_argument("--vae", default=None, help="DiT: VAE directory or hub id (default: the model's vae/, "
                       "or stabilityai/sd-vae-ft-mse for a checkpoint file)")
        g["model"].add_argument("--bf16", action="store_true", help="DiT: bf16 autocast for the transformer and the VAE decoder")
        g["model"].add_argument("--compile", action="store_true", help="DiT: torch.compile the transformer (a GPU; a minute "
                                "of compiling, then faster steps)")
        g["model"].add_argument("--guidance-channels", type=int, default=None, help="DiT: guide the first C latent channels "
                       "(default 3, as the original DiT code; 4 guides all)")
        g["model"].add_argument("--diffusers-embedding", action="store_true", help="DiT: keep diffusers' timestep embedding "
                       "(frequency shift 1) and pre-MLP LayerNorm eps 1e-5 instead of the original DiT's")
        g["model"].add_argument("--num-heads", type=int, default=None, help="DiT checkpoint file: attention heads, when the "
                       "width is not a DiT-S/B/L/XL one")
        g["model"].add_argument("--class-map", default=None, help="JSON {class folder: model label} when folders are not ImageNet wnids")
        g["model"].add_argument("--latent-cache", default=None, help="DiT: cache of real-image latents (default ~/.cache/dsco/latents)")
        g["model"].add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: this rank's GPU when available)")
        g["run"].add_argument("--resume", action="store_true", help="continue an interrupted run")
        g["model"].add_argument("--class-batch", type=int, default=1, help="classes sampled together in one batch (dsco, "
                                "diffusion, d4m, d3hr, mgd3, minimax): on a GPU 8-16 keeps it busy; the same sets as one class at a time up to "
                                "float rounding")
        g["model"].add_argument("--preflight", type=int, default=None, help="plain samples per class compared with the "
                                "real classes before synthesis, with a warning when they are far (default: 20 on a "
                                "folder dataset, 0 on named ones; recorded in the manifest)")
        c.set_defaults(func=func)
        if name == "sample":
            continue  # plain sampling has no method, NOpt or doping options to accept and ignore
        g["nopt"].add_argument("--schedule", default=None, help="NOpt preset: reference (the authors'; the default) or short "
                       "(ours: 10 Adam iterations on the noisiest half of the steps, 50 targets, about 1.8x plain "
                       "sampling; the default on mnist5k); every knob below overrides it")
        g["method"].add_argument("--templates", type=int, default=None, help="data-free template samples per class (reference 200, other presets 20)")
        g["method"].add_argument("--method", default="dsco", help="dsco, dsco-datafree, random, herding, kcenter, dm, diffusion, "
                       "and the diffusion-based peers d4m, d3hr, mgd3, igd, minimax")
        g["method"].add_argument("--data-free", action="store_true", help="DFDsCo: no real image is read")
        g["method"].add_argument("--feature-space", default="random-conv", help="herding/kcenter features: pixels, random-conv")
        g["nopt"].add_argument("--loss", default=None, help="NOpt loss: quantile (reference) or mmd")
        g["nopt"].add_argument("--iterations", type=int, default=None, help="NOpt iterations J per step")
        g["nopt"].add_argument("--lr", type=float, default=None)
        g["nopt"].add_argument("--optimizer", default=None, help="NOpt optimizer: sgd (reference) or adam (beta1 = --momentum)")
        g["nopt"].add_argument("--momentum", type=float, default=None)
        g["nopt"].add_argument("--k-noises", type=int, default=None, help="K noises per real target")
        g["nopt"].add_argument("--target-offset", type=int, default=None, choices=[0, 1])
        g["nopt"].add_argument("--feature-width", type=int, default=None, help="phi width (256 = 2048 features)")
        g["nopt"].add_argument("--max-targets", type=int, default=None, help="cap on real targets per class")
        g["nopt"].add_argument("--early-stop", type=int, default=None, help="patience in iterations (0 = off)")
        g["nopt"].add_argument("--std-floor", type=float, default=None, help="floor the targets' per-feature std at this "
                       "times its median (ours; 0 = off, the reference)")
        g["nopt"].add_argument("--anchor", default=None, choices=["noise", "real"], help="start from pure noise (the "
                       "paper's; the default) or from the class's real images noised to --anchor-t (ours: for data the "
                       "generator never saw)")
        g["nopt"].add_argument("--anchor-t", type=int, default=None, help="--anchor real: the start level as a timestep "
                       "of DiT's schedule, carried to the model's as the same noise level (default 495, D4M's; 600 is D3HR's)")
        g["nopt"].add_argument("--steps-fraction", type=float, default=None, help="optimise only this fraction of the steps")
        g["nopt"].add_argument("--steps-start", type=float, default=None, help="... starting this fraction of the steps in "
                       "(default 0: from the noisiest step)")
        g["doping"].add_argument("--doping-ipc", type=int, default=None, help="Doping: real images per class to add")
        g["doping"].add_argument("--budget", type=float, default=None, help="Doping: total size as a fraction of the train split")
        g["doping"].add_argument("--doping-guard", action=argparse.BooleanOptionalAction, default=None, help="Doping (ours): "
                                 "keep the synthetic images only if they train as well as as many random real images, "
                                 "else the set is class-balanced random real images (default: on a folder dataset)")
        g["doping"].add_argument("--classwise", action=argparse.BooleanOptionalAction, default=None, help="Doping: rank "
                                 "clarity within each class, an equal share each (default: on a folder dataset; "
                                 "--no-classwise ranks over the whole set, the authors' selection, the default on named datasets)")
        g["doping"].add_argument("--selector", default="clarity", help="Doping selector: clarity, random")
        g["doping"].add_argument("--teacher", default=None, help="teacher directory (dsco train-teacher; trained and cached if missing), "
                       "or an ImageNet ResNet-18 weights file for ImageNet subsets")
        g["doping"].add_argument("--synthetic-set", default=None, help="Doping: reuse this output set's synthetic images "
                       "(same dataset, IPC) instead of synthesising them again")
        g["doping"].add_argument("--doping-protocol", default=None, help="training protocol of the doping model: cpu-small, "
                       "imagenet-subset, imagenet1k (default: imagenet-subset on ImageNet data, cpu-small otherwise)")

    cv = sub.add_parser("convert-dit", help="convert an original DiT checkpoint (+ VAE) into a diffusers DiT directory")
    cv.add_argument("checkpoint")
    cv.add_argument("--vae", default=None, help="VAE directory or hub id (default stabilityai/sd-vae-ft-mse)")
    cv.add_argument("--num-heads", type=int, default=None, help="attention heads, when the width is not a DiT-S/B/L/XL one")
    cv.add_argument("--out", required=True)
    cv.set_defaults(func=_convert_dit)

    tt = sub.add_parser("train-teacher", help="train the teacher classifier on the full train split")
    _data_args(tt)
    _protocol_args(tt)
    tt.add_argument("--out", required=True)
    tt.add_argument("--seed", type=int, default=0)
    tt.set_defaults(func=_train_teacher)

    e = sub.add_parser("evaluate", help="train a fresh classifier on an output set; top-1 on the real test split")
    e.add_argument("set", nargs="?", default=None)
    _data_args(e)
    _protocol_args(e)
    e.add_argument("--runs", type=int, default=3)
    e.add_argument("--labels", default=None, help="override the protocol's labels: hard (cross-entropy) or teacher "
                   "(KL at T 20); imagenet1k trains with teacher labels, the others with hard labels")
    e.add_argument("--teacher", default=None, help="teacher directory (dsco train-teacher) or ImageNet ResNet-18 weights file")
    e.add_argument("--class-map", default=None, help="JSON {class folder: ImageNet label} for an ImageNet teacher "
                   "when folders are not wnids")
    e.add_argument("--first-seed", type=int, default=0, help="seeds first..first+runs-1 (more runs of a set "
                   "evaluated before: --first-seed 3 --runs 3)")
    e.add_argument("--full", action="store_true", help="train on the whole train split (the ceiling)")
    e.add_argument("--json", default=None, help="write the result here")
    e.set_defaults(func=_evaluate)

    k = sub.add_parser("check", help="how far the model's plain samples are from each real class, before any synthesis")
    _data_args(k)
    k.add_argument("--model", default=None, help="the diffusion model (default: the shipped mnist5k model)")
    k.add_argument("--per-class", type=int, default=20, help="plain samples per class")
    k.add_argument("--sampling-steps", type=int, default=50)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--teacher", default=None, help="teacher directory (default: trained on the train split and cached)")
    k.add_argument("--class-map", default=None, help="JSON {class folder: model label}")
    k.add_argument("--device", default=None)
    k.add_argument("--min-fidelity", type=float, default=0.9, help="warn below this class fidelity")
    k.add_argument("--min-coverage", type=float, default=0.5, help="warn below this coverage")
    k.add_argument("--json", default=None, help="write the report here")
    k.set_defaults(func=_check)

    b = sub.add_parser("bench", help="concentrate and evaluate a grid of methods x IPC; table and plots")
    _data_args(b)
    _protocol_args(b)
    b.add_argument("--ipc", default="1,10,50")
    b.add_argument("--methods", default="dsco,dsco-datafree,random,herding,kcenter,dm,diffusion,d4m,d3hr,mgd3,igd,minimax")
    b.add_argument("--d3hr-candidates", type=int, default=100_000, help="D3HR's candidate groups per class in the table "
                   "(ours on a CPU; 0 = the method's default, the original's 10^8)")
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--model", default=None)
    b.add_argument("--schedule", default=None, help="NOpt preset of the dsco sets (default: the dataset's, as concentrate)")
    b.add_argument("--out", required=True)
    b.add_argument("--curve", action="store_true", help="also the lossless curve over --budgets")
    b.add_argument("--cached-only", action="store_true", help="assemble table and plots from the cells already "
                   "computed (e.g. by parallel bench processes); compute nothing")
    b.add_argument("--budgets", default="0.05,0.1,0.2,0.3,0.4,0.5,0.6")
    b.add_argument("--curve-synthetic-ipc", type=int, default=10)
    b.add_argument("--curve-synthetic-max-budget", type=float, default=0.1, help="largest budget of the synthetic-only curve")
    b.add_argument("--curve-labels", default="hard,teacher")
    b.add_argument("--teacher", default=None, help="teacher directory (default OUT/teacher, trained if missing)")
    b.add_argument("--cross-protocol", default=None, help="also evaluate the sets of --cross-methods at --cross-ipc "
                   "with this protocol (e.g. cpu-resnet18): the cross-architecture check")
    b.add_argument("--cross-ipc", type=int, default=10)
    b.add_argument("--cross-methods", default="dsco,random,diffusion")
    b.add_argument("--bn-protocol", default="cpu-bn-convnet", help="evaluate every grid set again with this "
                   "BatchNorm protocol (a column of the table); 'none' to skip")
    b.add_argument("--synthesis-seeds", type=int, default=1, help="sets per diffusion-based cell (seeds --seed, "
                   "--seed+1, ...): the cell is the mean ± std of their accuracies")
    b.add_argument("--no-lrs", action="store_true", help="skip DD-Ranking's label-robust score (it trains every "
                   "set, and a random subset of each size, once more with teacher labels)")
    b.add_argument("--generator-samples", type=int, default=100, help="plain samples per class for the generator "
                   "metrics (Fréchet distance, precision/recall, density/coverage, fidelity); 0 to skip")
    b.set_defaults(func=_bench)

    v = sub.add_parser("verify", help="check an output set against its manifest")
    v.add_argument("set")
    v.set_defaults(func=_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="dsco: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(method_options=_subcommand(argv) == "concentrate").parse_args(argv)
    finished = False
    try:
        args.func(args)
        finished = True
    except DscoError as e:
        print(f"dsco: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsco: interrupted; finished work is kept (rerun with --resume)", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # only a command that imported torch can have joined a group
            from .parallel import leave

            leave(finished)
    return 0
