"""Reading one image file and fitting it to a size: shared by the in-memory folders and the lazy ImageNet splits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DscoError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def read_image(path: Path) -> Image.Image:
    """Decode one image file; a file that cannot be read is a DscoError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DscoError(f"corrupt or unreadable image {path}: {e}") from e


def fit_image(im: Image.Image, size: tuple[int, int], mode: str) -> np.ndarray:
    """Convert mode, then resize the short side and center-crop to `size` (W, H)."""
    im = im.convert(mode)
    if im.size != size:
        w, h = im.size
        scale = max(size[0] / w, size[1] / h)
        im = im.resize((max(size[0], round(w * scale)), max(size[1], round(h * scale))), Image.BICUBIC)
        left, top = (im.size[0] - size[0]) // 2, (im.size[1] - size[1]) // 2
        im = im.crop((left, top, left + size[0], top + size[1]))
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
