"""A second domain shift that ships offline: typeset digits (the fonts that ship with matplotlib: DejaVu, STIX and
Computer Modern faces, roman, bold, italic, mono, sans and old-style figures) as an ImageFolder the shipped mnist5k
generator never saw. Against MNIST's handwriting this changes the stroke style (serifs, uniform strokes, closed
4s, old-style 3-9 that hang below the line) and the acquisition (rendered, blurred like a scan, no pen pressure).

Each image: a face drawn at random, the digit rendered large, cropped to its ink, rotated by up to 8 degrees,
its longer side scaled to 14-20 px, blurred (radius 0-0.8 px) and centred by its centre of mass on a black 28x28
canvas, as MNIST's digits are. 180 images a class from one seeded generator, split 140 train / 40 test a class
(1,400 train and 400 test images), so train and test share the faces.

    python benchmarks/printed_shift.py --out data/printed     # then --dataset data/printed/train
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

PER_CLASS, TRAIN_PER_CLASS = 180, 140
# the digit-bearing text faces shipped in matplotlib's mpl-data (the same files on every machine)
FACES = [f"DejaVu{family}{style}.ttf" for family in ("Sans", "Serif", "SansMono")
         for style in ("", "-Bold", "-Oblique" if family != "Serif" else "-Italic",
                       "-BoldOblique" if family != "Serif" else "-BoldItalic")]
FACES += ["STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
          "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmmi10.ttf"]


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def render(digit: int, face: ImageFont.FreeTypeFont, rng: np.random.Generator) -> Image.Image:
    """One 28x28 grey image of `digit` in `face`, MNIST-like framing (white ink on black, centre of mass centred)."""
    big = Image.new("L", (96, 96))
    ImageDraw.Draw(big).text((48, 48), str(digit), fill=255, font=face, anchor="mm")
    big = big.rotate(float(rng.uniform(-8, 8)), resample=Image.BILINEAR)
    ink = big.crop(big.getbbox())
    side = float(rng.uniform(14, 20))
    scale = side / max(ink.size)
    ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))), Image.LANCZOS)
    ink = ink.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8))))
    a = np.asarray(ink, dtype=np.float64)
    ys, xs = np.indices(a.shape)
    cy, cx = (a * ys).sum() / a.sum(), (a * xs).sum() / a.sum()
    canvas = Image.new("L", (28, 28))
    canvas.paste(ink, (round(14 - cx), round(14 - cy)))
    return canvas


def build(out: Path, seed: int = 0) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    faces = [ImageFont.truetype(str(font_dir() / f), 72) for f in FACES]
    for digit in range(10):
        for i in range(PER_CLASS):
            split = "train" if i < TRAIN_PER_CLASS else "test"
            folder = out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            render(digit, faces[rng.integers(len(faces))], rng).save(folder / f"{digit}{i:03d}.png")
    return 10 * TRAIN_PER_CLASS, 10 * (PER_CLASS - TRAIN_PER_CLASS)


def main(argv: list[str] | None = None) -> None:
    from digits_shift import write_shift  # its neighbour in benchmarks/ (the script's folder is on sys.path)

    write_shift(build, __doc__, argv)


if __name__ == "__main__":
    main()
