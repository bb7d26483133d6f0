"""The printed-digits shift builder (benchmarks/printed_shift.py): an ImageFolder of 28 px digits framed as MNIST's,
the same bytes on every run, so the committed shift tables can be rebuilt."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.png")):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def test_printed_shift_writes_mnist_framed_digits_the_same_on_every_run(tmp_path):
    for name in ("a", "b"):
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "printed_shift.py"), "--out", str(tmp_path / name)],
                       check=True, capture_output=True, timeout=120)
    a = tmp_path / "a"
    assert _digest(a) == _digest(tmp_path / "b")
    for split, per_class in (("train", 140), ("test", 40)):
        assert sorted(p.name for p in (a / split).iterdir()) == [str(d) for d in range(10)]
        assert all(len(list((a / split / str(d)).glob("*.png"))) == per_class for d in range(10))
    img = np.asarray(Image.open(next((a / "train" / "8").glob("*.png"))), dtype=np.float64)
    assert img.shape == (28, 28) and img.max() > 200 and img[0].max() == 0  # white ink on black, an empty border
    ys, xs = np.indices(img.shape)
    assert abs((img * ys).sum() / img.sum() - 14) < 1 and abs((img * xs).sum() / img.sum() - 14) < 1  # centred by mass
