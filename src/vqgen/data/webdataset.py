"""Streamed WebDataset tar shards: images in the img2dataset layout, or image codes.

An image shard is a tar of samples that share a key: ``KEY.jpg|png|webp`` (the image), ``KEY.txt``
(the caption) and/or ``KEY.json`` (img2dataset's metadata; ``caption``/``text`` and ``label`` are
read from it, the other fields become ``Record.meta``) and optionally ``KEY.cls`` (a class label).
A code shard (``kind="codes"``, written by :func:`vqgen.data.stream.write_code_shards`) has
``KEY.codes.npy`` (an integer array, the code grid) in place of the image.
The ``webdataset`` library opens the tars (local paths, ``file:`` and ``pipe:`` URLs, brace
patterns), groups members into samples and shuffles them through a buffer; ``tarstream`` reads
the members and accounts for damage; this module splits the shards so every sample is read
exactly once across ``torchrun`` ranks and DataLoader workers, and decodes samples into records.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from vqgen.data.image import DEFAULT_MAX_PIXELS, SkipRecord, decode_caption, decode_image, decode_label
from vqgen.data.records import CodeRecord, Record
from vqgen.data.tarstream import MARKER, ShardError, tar_members
from vqgen.errors import VqgenError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
JSON_TEXT_FIELDS = ("caption", "text")
CODES_EXT = "codes.npy"
KINDS = ("images", "codes")


def _local_path(url: str) -> str | None:
    """The file a shard URL names on this machine (a plain path or ``file:``), or None (``pipe:``, remote)."""
    if url.startswith("file:"):
        return url[len("file:"):].removeprefix("//")
    if "://" in url or url.startswith("pipe:"):
        return None
    return url


def list_shards(source: str | Path | list) -> list[str]:
    """Shard paths from a directory (every ``*.tar``, sorted), one ``.tar``, a list, a brace
    pattern such as ``data/{00000..00099}.tar``, or webdataset URLs (``file:/data/{0..9}.tar``,
    ``pipe:curl -s https://host/{0..9}.tar``; local files are checked to exist)."""
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
    missing = [u for u in urls if _local_path(u) is not None and not os.path.isfile(_local_path(u))]
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
    """An iterable data set of :class:`Record` s (images) or :class:`CodeRecord` s (``kind="codes"``)
    streamed from WebDataset tar shards.

    Readers are the ``world_size x num_workers`` DataLoader workers of all ranks, numbered
    ``worker * world_size + rank`` so consecutive shards go to different ranks; reader ``g`` takes
    shards ``g, g + R, g + 2R, ...`` (``R`` readers), and ranks differ by at most one shard. With
    fewer shards than readers, every reader scans all shards and keeps every ``R``-th sample
    instead. Either way each sample is yielded exactly once per pass (ranks may then see a few
    samples more or fewer than each other: a training loop stops an epoch together). ``shuffle`` permutes the shard order by ``(seed, epoch)``, the same
    on every reader; call :meth:`set_epoch` each epoch. ``shuffle_buffer`` > 0 also shuffles each
    reader's samples through a buffer of that many (webdataset's ``shuffle``), seeded by ``(seed,
    epoch, reader)``, so a pass is the same sequence every time it is read: :meth:`samples` can
    then skip to a position without decoding what it skips (resuming, :mod:`vqgen.data.stream`).
    Codes: ``grid`` and ``codebook_size``, when given, are checked on every sample.

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
                 shuffle: bool = False, seed: int = 0, num_classes: int | None = None,
                 kind: str = "images", shuffle_buffer: int = 0, grid: tuple[int, ...] | None = None,
                 codebook_size: int | None = None):
        super().__init__()
        if kind not in KINDS:
            raise VqgenError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if shuffle_buffer < 0:
            raise VqgenError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.urls = list_shards(shards)
        self.kind, self.shuffle_buffer = kind, shuffle_buffer
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        self.codebook_size = codebook_size
        self.size, self.require_text, self.background = size, require_text, tuple(background)
        self.max_pixels, self.resample, self.num_classes = max_pixels, resample, num_classes
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.skipped: Counter = Counter()
        self.position = 0
        self.problems: list[tuple[str, str, str]] = []
        self._count_tar_errors = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def reader(self) -> tuple[int, int]:
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

    def _decode(self, sample: dict, key: str) -> Record | CodeRecord:
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
            if self.kind == "codes" and isinstance(info.get("meta"), dict):  # write_code_shards keeps the record's own
                meta = info["meta"]
        if "cls" in sample:
            label_raw = sample["cls"].decode("utf-8", errors="replace").strip()
        if self.kind == "codes":
            codes = self._codes(sample, key)
            text = decode_caption(text_raw, required=self.require_text)
            return CodeRecord(codes=codes, text=text, label=decode_label(label_raw, self.num_classes), meta=meta, key=key)
        image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if image_ext is None:
            raise SkipRecord("missing_image", key)
        text = decode_caption(text_raw, required=self.require_text)
        label = decode_label(label_raw, self.num_classes)
        image = decode_image(sample[image_ext], self.size, self.background, self.max_pixels, self.resample)
        return Record(image=image, text=text, label=label, meta=meta, key=key)

    def _codes(self, sample: dict, key: str) -> torch.Tensor:
        """The code grid of a code sample, (*grid) long, checked."""
        raw = sample.get(CODES_EXT)
        if raw is None:
            raise SkipRecord("missing_codes", key)
        try:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise SkipRecord("bad_codes", f"{key}.{CODES_EXT}: {e}") from None
        if arr.dtype.kind not in "iu" or arr.ndim not in (2, 3):
            raise SkipRecord("bad_codes", f"{key}: a {arr.ndim}-d {arr.dtype} array, not a grid of integer codes")
        if self.grid is not None and tuple(arr.shape) != self.grid:
            raise SkipRecord("bad_codes", f"{key}: grid {tuple(arr.shape)}, expected {self.grid}")
        if arr.size and (int(arr.min()) < 0 or (self.codebook_size and int(arr.max()) >= self.codebook_size)):
            raise SkipRecord("bad_codes", f"{key}: codes outside [0, {self.codebook_size or 'inf'})")
        return torch.from_numpy(arr.astype(np.int64))  # (*grid)

    def samples(self, skip: int = 0, exclude: Callable[[str], bool] | None = None) -> Iterator[tuple[int, object]]:
        """This reader's pass as ``(position, record)``: ``position`` counts the samples of the pass
        read so far, bad and excluded ones too (1 for the first; ``self.position`` follows it, and
        holds the pass's length at its end). The first ``skip`` samples are passed over undecoded
        (a resumed pass); ``exclude(key)`` leaves samples out undecoded (held-out keys). Bad
        samples are counted in ``skipped`` and not yielded."""
        reader, readers = self.reader()
        urls = self._ordered_urls()
        by_shard = len(urls) >= readers
        mine = urls[reader::readers] if by_shard else urls
        self._count_tar_errors = by_shard or reader == 0  # every reader sees every tar otherwise
        samples = wds.tariterators.group_by_keys(self._members(mine), handler=self._on_group_error)
        if not by_shard:
            samples = (s for n, s in enumerate(samples) if n % readers == reader)
        if self.shuffle_buffer:
            rng = random.Random((self.seed * 1_000_003 + self.epoch) * 65_537 + reader)
            samples = wds.filters.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(samples)
        before = Counter(self.skipped)
        self.position = 0
        for position, sample in enumerate(samples, 1):
            self.position = position
            key = f"{Path(sample.get('__url__', '')).name}:{sample['__key__']}"
            if position <= skip or (exclude is not None and exclude(key)):
                continue
            try:
                record = self._decode(sample, key)
            except SkipRecord as e:
                self._count(key, e.reason, e.detail)
                continue
            yield position, record
        new = self.skipped - before
        if new:
            log.warning("shards: reader %d/%d skipped %d samples (%s)", reader, readers, sum(new.values()),
                        ", ".join(f"{k}: {v}" for k, v in sorted(new.items())))

    def __iter__(self):
        return (record for _, record in self.samples())
