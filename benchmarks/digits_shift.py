"""A domain shift that ships offline: scikit-learn's 8x8 handwritten digits (UCI, another acquisition, resolution and
writer pool than MNIST) as an ImageFolder the shipped mnist5k generator never saw.

Each 8x8 image (ink 0..16) is scaled to 0..255, resized to 20x20 (bilinear) and centred on a black 28x28 canvas,
as MNIST's digits sit in a 20x20 box on 28x28; a stratified split (seed 0) gives 1,437 train and 360 test images.

    python benchmarks/digits_shift.py --out data/digits     # then --dataset data/digits/train
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image


def build(out: Path) -> tuple[int, int]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    train, test = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=0)
    for split, members in (("train", train), ("test", test)):
        for i in sorted(members):
            small = Image.fromarray((d.images[i] / 16 * 255).round().astype(np.uint8))
            canvas = Image.new("L", (28, 28))
            canvas.paste(small.resize((20, 20), Image.BILINEAR), (4, 4))
            folder = out / split / str(d.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            canvas.save(folder / f"{i:04d}.png")
    return len(train), len(test)


def write_shift(build_shift: Callable[[Path], tuple[int, int]], doc: str, argv: list[str] | None = None) -> None:
    """The command line of a shift builder: `--out DIR` gets DIR/train and DIR/test, one folder a class."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    n_train, n_test = build_shift(Path(a.out))
    print(f"{a.out}: {n_train} train, {n_test} test images in 10 class folders")


def main(argv: list[str] | None = None) -> None:
    write_shift(build, __doc__, argv)


if __name__ == "__main__":
    main()
