"""scikit-learn's handwritten digits (1,797 greyscale 8x8 images, labels 0-9), shipped with the library.

Images are upscaled with nearest-neighbour when the size is a multiple of 8: the data is 8x8 cells
of 17 grey levels, and nearest keeps exactly those cells (a smooth filter would invent blur that is
not in the data and that a tokenizer would then spend capacity on). Other sizes use bicubic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vqgen.data.image import resize_crop
from vqgen.data.records import Record

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digits_records(size: int = 32) -> list[Record]:
    """Every digit as a ``size`` x ``size`` RGB record: dark ink on white, label = digit, text = its word."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = 255.0 - data.images * (255.0 / 16.0)  # (N, 8, 8) ink 0..16 -> dark on white
    resample = "nearest" if size % 8 == 0 else "bicubic"
    out = []
    for i, (pixels, target) in enumerate(zip(images, data.target)):
        grey = Image.fromarray(np.rint(pixels).astype(np.uint8))  # (8, 8) L
        image = resize_crop(grey.convert("RGB"), size, resample)
        out.append(Record(image=image, text=DIGIT_WORDS[int(target)], label=int(target),
                          meta={"index": i}, key=f"digits/{i}"))
    return out


def write_digits_dataset(out_dir: str | Path, size: int = 32, progress: bool = True) -> dict:
    """Write the digits as an image folder (labels 0-9, classes.json of the digit words)."""
    from vqgen.data.folder import check_out_dir, write_image_folder

    check_out_dir(out_dir)
    n = write_image_folder(digits_records(size), out_dir, class_names=DIGIT_WORDS, progress=progress)
    return {"out": str(out_dir), "count": n}
