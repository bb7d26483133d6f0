"""Fingerprints of seeded sets, one per method: a refactor that should change nothing must leave them as they are.

Every method of the registry builds a seeded IPC 2 set (seed 0, cheap knobs so the whole run takes minutes on one
core) on (a) the shipped mnist5k model with the first 40 training images of each class and (b) a tiny random DiT
with a tiny VAE on random 32x32 images (the diffusion-based methods only); the sha256 of each set's image files, in
manifest order, is the fingerprint. Caches live in a temporary HOME, so nothing is read from an earlier run.

    python benchmarks/set_hashes.py --out benchmarks/results/set_hashes.json      # record
    python benchmarks/set_hashes.py --check benchmarks/results/set_hashes.json    # compare; exit 1 on a change
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path


def cheap(cfg):
    """Knobs that keep every method to seconds or a minute at IPC 2 (the fingerprint is of the code, not the knobs)."""
    cfg.dm.iterations = 10
    cfg.d3hr.candidates, cfg.d3hr.candidate_batch = 200, 100
    cfg.igd.checkpoint_epochs = (0, 1)
    cfg.minimax.epochs = 1
    return cfg


def fingerprints(work: Path, only: str = "") -> dict[str, str]:
    import torch
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    from dsco.data import ImageSet, load_dataset
    from dsco.methods import REGISTRY
    from dsco.models.latent import LatentBackend, alphas_cumprod_from
    from dsco.models.loading import load_backend
    try:
        from dsco.orchestrate import ConcentrateConfig, concentrate, default_model_dir
    except ImportError:  # a checkout from before the module's rename (dsco/concentrate.py), to compare across it
        import importlib

        old = importlib.import_module("dsco.concentrate")
        ConcentrateConfig, concentrate, default_model_dir = old.ConcentrateConfig, old.concentrate, old.default_model_dir
    from dsco.outputset import read_manifest

    torch.set_num_threads(1)
    out: dict[str, str] = {}

    def run(key: str, train: ImageSet, backend, method: str, dataset: str) -> None:
        if not key.startswith(only):
            return
        cfg = cheap(ConcentrateConfig(dataset=dataset, method=method, ipc=2, seed=0, out=str(work / key)))
        path = concentrate(cfg, train=train, backend=backend if REGISTRY[method].uses_model else None, progress=False)
        digest = hashlib.sha256("".join(e["sha256"] for e in read_manifest(path)["images"]).encode()).hexdigest()[:16]
        out[key] = digest
        print(key, digest, flush=True)

    full = load_dataset("mnist5k")
    first = torch.cat([full.indices_of(c)[:40] for c in range(len(full.class_names))])
    mnist = full.subset(first)
    pixel = load_backend(default_model_dir("mnist5k"))
    for method in REGISTRY:
        run(f"mnist5k/{method}", mnist, pixel, method, "mnist5k")

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                                sample_size=8, patch_size=2, num_embeds_ada_norm=3)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8)
    latent = LatentBackend(dit, vae, alphas_cumprod_from({}), num_steps=5, device="cpu")
    g = torch.Generator().manual_seed(1)
    images = torch.rand((3 * 12, 3, 32, 32), generator=g)
    tiny = ImageSet(images, torch.arange(3).repeat_interleave(12), ["a", "b", "c"], "tiny")
    for method, m in REGISTRY.items():
        if m.uses_model:
            run(f"tiny-dit/{method}", tiny, latent, method, "tiny")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the fingerprints here")
    p.add_argument("--check", help="compare with the fingerprints recorded here")
    p.add_argument("--only", default="", help="only the sets whose key starts with this (mnist5k/, tiny-dit/)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dsco-hashes-") as tmp:
        os.environ["HOME"] = tmp  # every cache under ~/.cache/dsco starts empty
        got = fingerprints(Path(tmp) / "sets", a.only)
    if a.out:
        Path(a.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "fingerprints": got}, indent=2) + "\n")
    if a.check:
        want = {k: v for k, v in json.loads(Path(a.check).read_text())["fingerprints"].items() if k.startswith(a.only)}
        changed = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        for k in changed:
            print(f"changed: {k}: {want.get(k)} -> {got.get(k)}")
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
