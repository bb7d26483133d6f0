"""Tiny datasets and randomly initialised models of the real classes, so tests run in seconds."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsco.data import ImageSet
from dsco.models.pixel import PixelBackend, PixelModelConfig, save_pixel_model

torch.set_num_threads(1)

SIZE, CLASSES, PER_CLASS = 8, ("a", "b", "c"), 12


def make_images(n: int, seed: int, label: int) -> np.ndarray:
    """Class-dependent patterns plus noise, uint8 (n, SIZE, SIZE)."""
    rng = np.random.default_rng(seed)
    base = np.zeros((SIZE, SIZE))
    base[:, label * 2 : label * 2 + 3] = 200
    return np.clip(base + rng.normal(0, 30, (n, SIZE, SIZE)), 0, 255).astype(np.uint8)


def write_folder(root: Path, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i, arr in enumerate(make_images(per_class, seed + label, label)):
            Image.fromarray(arr).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch) -> None:
    """Every cache dsco keeps under ~/.cache/dsco (latents, teachers, fine-tuned weights) stays in the test's folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An ImageFolder train split: 3 classes x 12 grey 8x8 images."""
    return write_folder(tmp_path / "train")


@pytest.fixture
def test_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "val", per_class=6, seed=100)


@pytest.fixture
def tiny_set() -> ImageSet:
    imgs = np.concatenate([make_images(PER_CLASS, label, label) for label in range(3)])
    labels = torch.arange(3).repeat_interleave(PER_CLASS)
    return ImageSet(torch.from_numpy(imgs).float().unsqueeze(1) / 255, labels, list(CLASSES), "tiny")


def tiny_model_config() -> PixelModelConfig:
    return PixelModelConfig(image_size=SIZE, channels=1, num_classes=3, block_out_channels=(8, 16),
                            class_names=list(CLASSES))


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A randomly initialised pixel model of the shipped class, saved in the shipped format."""
    cfg = tiny_model_config()
    torch.manual_seed(0)
    save_pixel_model(cfg.build(), cfg, tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def tiny_backend(tiny_model_dir: Path) -> PixelBackend:
    return PixelBackend.load(tiny_model_dir, num_steps=5, guidance=2.0)


def kill_when(proc: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as `path` exists (a finished class record): an interruption at a known point."""
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
