"""Streamed WebDataset tar shards in the img2dataset layout.

A shard is a tar of samples that share a key: ``KEY.jpg|png|webp`` (the image), ``KEY.txt``
(the caption) and/or ``KEY.json`` (img2dataset's metadata; ``caption``/``text`` and ``label`` are
read from it, the other fields become ``Record.meta``) and optionally ``KEY.cls`` (a class label).
The ``webdataset`` library opens the tars and groups members into samples, ``tarstream`` reads
the members and accounts for damage; this module splits the shards so every sample is read
exactly once across ``torchrun`` ranks and DataLoader workers, and decodes samples into Records.
"""
from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from vqgen.data.image import DEFAULT_MAX_PIXELS, SkipRecord, decode_caption, decode_image, decode_label
from vqgen.data.records import Record
from vqgen.data.tarstream import MARKER, ShardError, tar_members
from vqgen.errors import VqgenError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
JSON_TEXT_FIELDS = ("caption", "text")


def list_shards(source: str | Path | list) -> list[str]:
    """Shard paths from a directory (every ``*.tar``, sorted), one ``.tar``, a list, or a brace
    pattern such as ``data/{00000..00099}.tar``."""
    if isinstance(source, (list, tuple)):
        urls = [str(s) for s in source]
    else:
        path = Path(source)
        if path.is_dir():
            urls = sorted(str(p) for p in path.glob("*.tar"))
            if not urls:
                raise VqgenError(f"{path} holds no .tar shards")
        elif "{" in str(source):
            urls = list(wds.shardlists.expand_urls(str(source)))
        else:
            urls = [str(path)]
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
    if missing:
        raise VqgenError(f"shard {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if not urls:
        raise VqgenError(f"no shards in {source}")
    return urls


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else the initialised process group, else ``RANK``/``WORLD_SIZE``, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class ShardDataset(IterableDataset):
    """An iterable data set of :class:`Record` s streamed from WebDataset tar shards.

    Readers are the ``world_size x num_workers`` DataLoader workers of all ranks, numbered
    ``worker * world_size + rank`` so consecutive shards go to different ranks; reader ``g`` takes
    shards ``g, g + R, g + 2R, ...`` (``R`` readers), and ranks differ by at most one shard. With
    fewer shards than readers, every reader scans all shards and keeps every ``R``-th sample
    instead. Either way each sample is yielded exactly once per pass (ranks may then see a few
    samples more or fewer than each other: a training loop stops an epoch together). ``shuffle`` permutes the shard order by ``(seed, epoch)``, the same
    on every reader; call :meth:`set_epoch` each epoch.

    Bad samples are skipped and counted by reason in ``skipped`` (of the process that iterates:
    with DataLoader workers each worker has its own, and each logs its counts at the end of a pass).
    Damaged tars lose nothing uncounted (:mod:`vqgen.data.tarstream`): a shard that cannot be
    read counts once as ``bad_shard``; a damaged header skips the samples either side of it
    (``bad_tar_header``) and reading resumes after it; a cut-off shard skips its last sample
    (``truncated_shard``).
    """

    def __init__(self, shards: str | Path | list, size: int | None = None, require_text: bool = False,
                 background: tuple[int, int, int] = (255, 255, 255), max_pixels: int = DEFAULT_MAX_PIXELS,
                 resample: str = "auto", rank: int | None = None, world_size: int | None = None,
                 shuffle: bool = False, seed: int = 0, num_classes: int | None = None):
        super().__init__()
        self.urls = list_shards(shards)
        self.size, self.require_text, self.background = size, require_text, tuple(background)
        self.max_pixels, self.resample, self.num_classes = max_pixels, resample, num_classes
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.skipped: Counter = Counter()
        self.problems: list[tuple[str, str, str]] = []
        self._count_tar_errors = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _reader(self) -> tuple[int, int]:
        """(this reader's index, number of readers) over all ranks and workers."""
        rank, world = _rank_and_world(self.rank, self.world_size)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return worker * world + rank, world * workers

    def _ordered_urls(self) -> list[str]:
        urls = list(self.urls)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(urls)
        return urls

    def _count(self, key: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.problems) < 1000:
            self.problems.append((key, reason, detail))

    def _count_shard(self, url: str, reason: str, detail: str) -> None:
        """A problem of a whole shard (not of a sample): counted by one reader only."""
        if self._count_tar_errors:
            self._count(Path(url).name, reason, detail)

    def _members(self, urls: list[str]):
        """Every member of every shard (``{}`` after each shard, as webdataset's expander does)."""
        for url in urls:
            try:
                stream = wds.gopen(url)
            except Exception as e:  # webdataset's opener raises whatever its backend does
                self._count_shard(url, "bad_shard", f"cannot open: {type(e).__name__}: {e}")
                continue
            try:
                yield from tar_members(stream, url)
            except ShardError as e:
                self._count_shard(url, "bad_shard", str(e))
            finally:
                try:
                    stream.close()
                except Exception as e:  # a ``pipe:`` command that exited with an error status
                    self._count_shard(url, "bad_shard", f"{type(e).__name__}: {e}")
            yield {}

    def _on_group_error(self, exn: Exception) -> bool:
        """webdataset's ``group_by_keys`` handler: a file name twice in a sample (the copy is dropped)."""
        message = str(exn.args[0]) if exn.args else type(exn).__name__
        if self._count_tar_errors:
            self._count(message.split(":")[0], "duplicate", message)
        return True

    def _decode(self, sample: dict, key: str) -> Record:
        if MARKER in sample:
            reason, _, detail = sample[MARKER].decode().partition("\t")
            raise SkipRecord(reason, detail)
        meta: dict = {}
        text_raw, label_raw = sample.get("txt"), None
        if "json" in sample:
            try:
                info = json.loads(sample["json"])
            except (ValueError, UnicodeDecodeError) as e:
                raise SkipRecord("bad_metadata", f"{key}.json: {e}") from None
            if not isinstance(info, dict):
                raise SkipRecord("bad_metadata", f"{key}.json is not a JSON object")
            if text_raw is None:
                text_raw = next((info[f] for f in JSON_TEXT_FIELDS if info.get(f) is not None), None)
            label_raw = info.get("label")
            meta = {k: v for k, v in info.items() if k not in JSON_TEXT_FIELDS and k != "label"}
        if "cls" in sample:
            label_raw = sample["cls"].decode("utf-8", errors="replace").strip()
        image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if image_ext is None:
            raise SkipRecord("missing_image", key)
        text = decode_caption(text_raw, required=self.require_text)
        label = decode_label(label_raw, self.num_classes)
        image = decode_image(sample[image_ext], self.size, self.background, self.max_pixels, self.resample)
        return Record(image=image, text=text, label=label, meta=meta, key=key)

    def __iter__(self):
        reader, readers = self._reader()
        urls = self._ordered_urls()
        by_shard = len(urls) >= readers
        mine = urls[reader::readers] if by_shard else urls
        self._count_tar_errors = by_shard or reader == 0  # every reader sees every tar otherwise
        samples = wds.tariterators.group_by_keys(self._members(mine), handler=self._on_group_error)
        before = Counter(self.skipped)
        for n, sample in enumerate(samples):
            if not by_shard and n % readers != reader:
                continue
            key = f"{Path(sample.get('__url__', '')).name}:{sample['__key__']}"
            try:
                record = self._decode(sample, key)
            except SkipRecord as e:
                self._count(key, e.reason, e.detail)
                continue
            yield record
        new = self.skipped - before
        if new:
            log.warning("shards: reader %d/%d skipped %d samples (%s)", reader, readers, sum(new.values()),
                        ", ".join(f"{k}: {v}" for k, v in sorted(new.items())))
