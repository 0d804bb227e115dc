"""Images for tokenizer training and evaluation: an image folder or WebDataset shards held in
memory (:func:`load_image_set`), shards streamed for training (:func:`image_stream`) or in one pass
(:func:`stream_shards`), and the held-out split (every n-th image of a folder; the images whose key
hashes to it in shards)."""
from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

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


def _image_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)


def load_image_set(root: str | Path, size: int, require_text: bool = False, limit: int = 0) -> ImageSet:
    """Decode every image of an image folder or of WebDataset shards (at most ``limit``; 0: all)
    at ``size`` x ``size`` into one uint8 tensor. Skipped records are counted by reason."""
    from vqgen.data.stream import is_stream_source

    if is_stream_source(root):
        from vqgen.data.webdataset import ShardDataset

        ds = ShardDataset(root, size=size, require_text=require_text, rank=0, world_size=1)
        records = []
        for rec in ds:
            records.append(rec)
            if limit and len(records) >= limit:
                break
        class_names = None
    else:
        from vqgen.data.folder import ImageFolder

        ds = ImageFolder(root, size=size, require_text=require_text)
        records = (ds[i] for i in range(len(ds) if not limit else min(limit, len(ds))))
        class_names = ds.class_names
    images, texts, labels, metas, keys = [], [], [], [], []
    for rec in records:
        images.append(_image_tensor(rec.image))
        texts.append(rec.text)
        labels.append(rec.label)
        metas.append(rec.meta)
        keys.append(rec.key)
    if not images:
        raise VqgenError(f"{root} holds no usable images (skipped: {dict(ds.skipped) or 'none'})")
    return ImageSet(images=torch.stack(images), texts=texts, labels=labels, metas=metas,
                    keys=keys, class_names=class_names, skipped=ds.skipped)


def heldout_key(key: str, every: int) -> bool:
    """Whether a shard sample is held out: its key's CRC-32 picks one in ``every`` (0: none)."""
    return every > 0 and zlib.crc32(key.encode("utf-8")) % every == every - 1


class _Batched(IterableDataset):
    """Runs in each DataLoader worker over its share of the shards: ``("batch", images (B, 3, S, S)
    uint8, labels, texts, metas, keys)`` items, then one ``("pass", records read, skipped Counter)``."""

    def __init__(self, shards, batch_size: int, holdout_every: int = 0, drop_last: bool = True):
        super().__init__()
        self.shards, self.batch_size, self.holdout_every, self.drop_last = shards, batch_size, holdout_every, drop_last

    def _pack(self, recs: list):
        return ("batch", torch.stack([_image_tensor(r.image) for r in recs]), [r.label for r in recs],
                [r.text for r in recs], [r.meta for r in recs], [r.key for r in recs])

    def __iter__(self):
        before = Counter(self.shards.skipped)
        buf, n = [], 0
        for rec in self.shards:
            n += 1
            if heldout_key(rec.key, self.holdout_every):
                continue
            buf.append(rec)
            if len(buf) == self.batch_size:
                yield self._pack(buf)
                buf = []
        if buf and not self.drop_last:
            yield self._pack(buf)
        yield "pass", n, dict(Counter(self.shards.skipped) - before)  # a dict: DataLoader's copy would add Counters


def stream_shards(source, size: int, batch_size: int, workers: int = 0, drop_last: bool = False,
                  holdout_every: int = 0, shards=None) -> Iterator[tuple]:
    """One pass over shards as batches ``(images (B, 3, S, S) uint8, labels, texts, metas, keys)``,
    then a final ``(records read, skipped Counter)`` (summed over workers)."""
    if shards is None:
        from vqgen.data.webdataset import ShardDataset

        shards = ShardDataset(source, size=size, rank=0, world_size=1)
    records, skipped = 0, Counter()
    for kind, *item in DataLoader(_Batched(shards, batch_size, holdout_every, drop_last), batch_size=None,
                                  num_workers=workers):
        if kind == "pass":
            records += item[0]
            skipped.update(item[1])
        else:
            yield tuple(item)
    yield records, skipped


def image_stream(source, size: int, batch_size: int, holdout_every: int, seed: int, rank: int, world_size: int,
                 workers: int, shuffle_buffer: int, require_text: bool = False, metas: bool = False):
    """One rank's training batches of image shards: a :class:`~vqgen.data.stream.StreamLoader` over
    its split (shards shuffled by epoch, samples through ``shuffle_buffer``, a resumable position),
    without the held-out images (:func:`heldout_key`; :func:`load_heldout_shards` reads those)."""
    from vqgen.data.stream import StreamLoader
    from vqgen.data.webdataset import ShardDataset

    shards = ShardDataset(source, size=size, require_text=require_text, rank=rank, world_size=world_size,
                          shuffle=True, seed=seed, shuffle_buffer=shuffle_buffer)
    return StreamLoader(shards, batch_size, workers=workers, exclude=partial(heldout_key, every=holdout_every),
                        metas=metas)


def load_heldout_shards(source, size: int, every: int, limit: int, require_text: bool = False) -> ImageSet | None:
    """Up to ``limit`` held-out images of shards (:func:`heldout_key`) in memory, or None if none;
    ``require_text``: only images with a caption."""
    from vqgen.data.webdataset import ShardDataset

    if every == 0:
        return None
    recs = []
    for rec in ShardDataset(source, size=size, require_text=require_text, rank=0, world_size=1):
        if heldout_key(rec.key, every):
            recs.append(rec)
            if len(recs) >= limit:
                break
    if not recs:
        return None
    return ImageSet(images=torch.stack([_image_tensor(r.image) for r in recs]), texts=[r.text for r in recs],
                    labels=[r.label for r in recs], metas=[r.meta for r in recs], keys=[r.key for r in recs],
                    class_names=None, skipped=Counter())


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
