"""Image folders held in memory for tokenizer training and evaluation, and the held-out split."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vqgen.errors import VqgenError


@dataclass
class ImageSet:
    """A whole image folder decoded once: ``images`` (N, 3, H, W) uint8 plus per-record fields."""

    images: torch.Tensor
    texts: list[str | None]
    labels: list[int | None]
    metas: list[dict]
    keys: list[str]
    class_names: list[str] | None
    skipped: Counter

    def __len__(self) -> int:
        return self.images.shape[0]

    def float_images(self, idx: torch.Tensor) -> torch.Tensor:
        """Images at ``idx`` as (B, 3, H, W) float in [0, 1]."""
        return self.images[idx].float().div_(255.0)

    def label_tensor(self) -> torch.Tensor:
        """All labels (N,) long; every record must have one."""
        if any(label is None for label in self.labels):
            raise VqgenError("class conditioning needs a label on every record (metadata.jsonl 'label')")
        return torch.tensor(self.labels, dtype=torch.long)


def load_image_set(root: str | Path, size: int) -> ImageSet:
    """Decode every image of an image folder at ``size`` x ``size`` into one uint8 tensor."""
    from vqgen.data.folder import ImageFolder

    folder = ImageFolder(root, size=size)
    if len(folder) == 0:
        raise VqgenError(f"{root} holds no usable images (skipped: {dict(folder.skipped) or 'none'})")
    images, metas, keys = [], [], []
    for i in range(len(folder)):
        rec = folder[i]
        images.append(torch.from_numpy(np.asarray(rec.image, dtype=np.uint8).copy()).permute(2, 0, 1))  # (3, H, W)
        metas.append(rec.meta)
        keys.append(rec.key)
    return ImageSet(images=torch.stack(images), texts=folder.texts, labels=folder.labels, metas=metas,
                    keys=keys, class_names=folder.class_names, skipped=folder.skipped)


def holdout_split(n: int, every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) indices: every ``every``-th item (positions every-1, 2*every-1, ...) is held out.

    ``every=0`` holds nothing out (the held-out set is then the training set).
    """
    idx = torch.arange(n)
    if every == 0:
        return idx, idx
    held = idx % every == every - 1
    if held.all() or not held.any():
        raise VqgenError(f"cannot hold out every {every}th of {n} images")
    return idx[~held], idx[held]
