"""Streaming training data for every stage: batches of images or codes from WebDataset shards.

    stream = ShardDataset("data/{00000..00099}.tar", kind="images", size=64, rank=r, world_size=w,
                          shuffle=True, shuffle_buffer=1000, seed=0)     # or kind="codes", grid=(16, 16)
    loader = StreamLoader(stream, batch_size=32, workers=2)
    loader.load_state_dict(checkpoint["data"])     # resuming: the next batch is the one after the last trained on
    for data, labels, texts in loader:             # images (B, 3, S, S) uint8, or codes (B, *grid) long
        ...
        checkpoint["data"] = loader.state_dict()   # {"epoch", "consumed", "positions", "layout", ...}

:class:`~vqgen.data.webdataset.ShardDataset` is the one source (local paths, brace patterns,
``file:``/``pipe:`` URLs; split by rank and worker; shards shuffled by epoch, samples through a
buffer; bad samples skipped and counted by reason). :class:`StreamLoader` runs it in DataLoader
workers, epoch after epoch, and keeps the position: each worker's pass is a fixed sequence for
(seed, epoch, rank, worker), and the loader hands out the workers' batches in turn (worker 0, 1,
..., skipping workers whose pass has ended, whatever order the DataLoader delivers them in). The
position is, per worker, how many samples of its sequence lie behind its last batch handed out,
plus whose turn is next. Resuming with the same world size and workers, each worker passes over
its samples without decoding them, so training goes on at the very next sample;
with another layout the interrupted epoch starts over (said once on stderr). Skip counts travel
with the batches, so the counts of a resumed pass are those of the whole pass.

Code shards are written from a ``vqgen tokenizer encode`` folder by :func:`write_code_shards`
(``vqgen data code-shards CODES OUT``): ``KEY.codes.npy`` (the grid, int16/int32) and ``KEY.json``
(``text``, ``label``, ``meta``, the original ``key``).
"""
from __future__ import annotations

import io
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vqgen.data.records import CodeRecord
from vqgen.data.webdataset import CODES_EXT, ShardDataset
from vqgen.errors import VqgenError


def is_stream_source(source) -> bool:
    """True for shards to stream: a ``.tar``, a brace pattern, a ``file:``/``pipe:``/remote URL, or a
    folder of ``.tar`` files that is neither an image folder (``metadata.jsonl``) nor a code folder
    (``info.json``)."""
    text = str(source)
    if text.startswith(("pipe:", "file:")) or "://" in text:
        return True
    if text.endswith(".tar") or ("{" in text and ".tar" in text):
        return True
    path = Path(text)
    return (path.is_dir() and not (path / "metadata.jsonl").is_file() and not (path / "info.json").is_file()
            and any(path.glob("*.tar")))


def _image_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)


class _WorkerBatches(IterableDataset):
    """Runs in each DataLoader worker: ``("batch", worker, position, skipped, payload)`` items, then
    one ``("pass", worker, position, skipped, None)``; ``skipped`` holds the counts since the last item."""

    def __init__(self, dataset: ShardDataset, batch_size: int, drop_last: bool, skips: list[int],
                 exclude: Callable[[str], bool] | None, metas: bool):
        super().__init__()
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last
        self.skips, self.exclude, self.metas = skips, exclude, metas

    def _pack(self, recs: list) -> tuple:
        if isinstance(recs[0], CodeRecord):
            data = torch.stack([r.codes for r in recs])  # (B, *grid) long
        else:
            data = torch.stack([_image_tensor(r.image) for r in recs])  # (B, 3, S, S) uint8
        batch = data, [r.label for r in recs], [r.text for r in recs]
        return (*batch, [r.meta for r in recs]) if self.metas else batch

    def __iter__(self):
        info = get_worker_info()
        worker = 0 if info is None else info.id
        ds = self.dataset
        counted, buf, position = Counter(ds.skipped), [], self.skips[worker]

        def news() -> dict:  # skip counts since the last item (a dict: the DataLoader copies it)
            nonlocal counted
            new, counted = ds.skipped - counted, Counter(ds.skipped)
            return dict(new)

        for position, record in ds.samples(skip=self.skips[worker], exclude=self.exclude):
            buf.append(record)
            if len(buf) == self.batch_size:
                yield "batch", worker, position, news(), self._pack(buf)
                buf = []
        if buf and not self.drop_last:
            yield "batch", worker, position, news(), self._pack(buf)
        yield "pass", worker, ds.position, news(), None


class StreamLoader:
    """Endless batches ``(data, labels, texts)`` from a :class:`ShardDataset`, epoch after epoch,
    with a resumable position (module doc).

    ``workers``: DataLoader worker processes (0: read in this process). ``drop_last``: a worker's
    last partial batch of a pass is dropped. ``exclude(key)``: samples to leave out (a held-out
    split; must pickle for workers, e.g. a ``functools.partial``). ``metas``: batches are
    ``(data, labels, texts, metas)``, each record's ``meta`` dict too (its ``texts`` captions).
    After each pass, ``records`` and ``skipped`` (by reason) are that pass's counts for this rank
    (:func:`report_stream`).
    """

    def __init__(self, dataset: ShardDataset, batch_size: int, workers: int = 0, drop_last: bool = True,
                 exclude: Callable[[str], bool] | None = None, metas: bool = False):
        if batch_size < 1 or workers < 0:
            raise VqgenError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers
        self.drop_last, self.exclude, self.metas = drop_last, exclude, metas
        self.epoch, self.consumed = 0, 0
        self.positions = [0] * max(workers, 1)
        self.turn, self.ended = 0, []  # the worker whose batch is next; workers whose pass has ended
        self.pass_skipped: Counter = Counter()  # counts of the epoch so far
        self.pass_records = 0
        self.records: int | None = None  # counts of the last finished pass
        self.skipped: Counter = Counter()

    @property
    def layout(self) -> list[int]:
        """[world size, workers]: a position applies to the same layout only."""
        return [self.dataset.reader()[1] // max(self.workers, 1), max(self.workers, 1)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "positions": list(self.positions),
                "turn": self.turn, "ended": list(self.ended), "layout": self.layout,
                "skipped": dict(self.pass_skipped), "records": self.pass_records}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        if list(state.get("layout", [])) == self.layout:
            self.consumed, self.positions = int(state["consumed"]), [int(p) for p in state["positions"]]
            self.turn, self.ended = int(state["turn"]), [int(w) for w in state["ended"]]
            self.pass_skipped, self.pass_records = Counter(state.get("skipped", {})), int(state.get("records", 0))
            return
        print(f"vqgen: the data position was saved with world size x workers {state.get('layout')}, this run "
              f"has {self.layout}: epoch {self.epoch} of the shards starts over", file=sys.stderr)
        self._restart()

    def _restart(self) -> None:
        self.consumed, self.positions, self.turn, self.ended = 0, [0] * max(self.workers, 1), 0, []
        self.pass_skipped, self.pass_records = Counter(), 0

    def _pass(self) -> Iterator[tuple]:
        self.dataset.set_epoch(self.epoch)
        batches = _WorkerBatches(self.dataset, self.batch_size, self.drop_last, list(self.positions), self.exclude,
                                 self.metas)
        # its own generator: starting a pass leaves the global RNG alone (a resumed run draws what an
        # uninterrupted one does, wherever its passes start)
        seeds = torch.Generator().manual_seed(self.dataset.seed * 1_000_003 + self.epoch)
        return iter(DataLoader(batches, batch_size=None, num_workers=self.workers, generator=seeds))

    def _in_turn(self) -> Iterator[tuple]:
        """The items of a pass, the workers' batches in turn (the sequence a position refers to)."""
        readers = max(self.workers, 1)
        queues: list[list] = [[] for _ in range(readers)]
        items = self._pass()
        while len(self.ended) < readers:
            while self.turn in self.ended:
                self.turn = (self.turn + 1) % readers
            while not queues[self.turn]:
                item = next(items)
                queues[item[1]].append(item)
            item = queues[self.turn].pop(0)
            if item[0] == "pass":
                self.ended.append(self.turn)
            else:
                self.turn = (self.turn + 1) % readers
            yield item

    def __iter__(self) -> Iterator[tuple]:
        while True:
            resumed, got = self.consumed > 0, 0
            for kind, worker, position, skipped, payload in self._in_turn():
                self.pass_skipped.update(skipped)
                self.positions[worker] = position
                if kind == "batch":
                    got += 1
                    self.consumed += payload[0].shape[0]
                    self.pass_records += payload[0].shape[0]
                    yield payload
            if got == 0 and not resumed:
                raise VqgenError(f"{self.dataset.urls[0]}{' ...' if len(self.dataset.urls) > 1 else ''}: fewer "
                                 f"than one batch of {self.batch_size} for this rank in a pass (skipped: "
                                 f"{dict(self.pass_skipped) or 'none'})")
            self.records, self.skipped = self.pass_records, Counter(self.pass_skipped)
            self.epoch += 1
            self._restart()


def position_state(batches) -> dict | list[dict]:
    """What a checkpoint keeps of a batch order: an in-memory order's ``state_dict`` (the same on
    every rank), or every rank's :class:`StreamLoader` position in rank order (collective under torchrun)."""
    import torch.distributed as dist

    state = batches.state_dict()
    if not isinstance(batches, StreamLoader):
        return state
    if not dist.is_initialized():
        return [state]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out


def load_position(batches, saved: dict | list[dict], rank: int, world_size: int) -> None:
    """Restore what :func:`position_state` saved; a stream takes this rank's position (saved by
    another number of ranks, the interrupted epoch starts over: :meth:`StreamLoader.load_state_dict`)."""
    if isinstance(saved, list):
        saved = saved[rank] if len(saved) == world_size else saved[0]
    batches.load_state_dict(saved)


def report_stream(run_dir: str | Path, source, loader: StreamLoader, distributed: bool) -> None:
    """Record rank 0's counts of a stream in ``RUN/data.json`` (call on the main rank): its last
    whole pass, else the part of one pass read so far, unless a resumed run already recorded a
    whole pass."""
    from vqgen.runtime import DATA_NAME, report_skips

    where = f"{source} (rank 0's shards)" if distributed else str(source)
    if loader.records is not None:
        report_skips(run_dir, where, loader.records, loader.skipped)
        return
    saved = Path(run_dir) / DATA_NAME
    if saved.is_file() and json.loads(saved.read_text(encoding="utf-8")).get("records") is not None:
        return
    report_skips(run_dir, f"{where}, part of one pass", None, loader.pass_skipped)


def write_code_shards(codes_dir: str | Path, out_dir: str | Path, shard_size: int = 1000) -> list[Path]:
    """A ``vqgen tokenizer encode`` folder as WebDataset code shards ``codes-00000.tar``, ...; returns them."""
    from vqgen.data.codes import CodeDataset
    from vqgen.io import atomic_write, make_dir

    if shard_size < 1:
        raise VqgenError(f"shard_size must be >= 1, got {shard_size}")
    data = CodeDataset.load(codes_dir)
    out = make_dir(out_dir)
    dtype = np.int16 if data.codebook_size <= 32767 else np.int32
    paths = []
    for first in range(0, len(data), shard_size):
        path = Path(out) / f"codes-{first // shard_size:05d}.tar"

        def write(tmp, first=first):
            with tarfile.open(tmp, "w") as tar:
                for i in range(first, min(first + shard_size, len(data))):
                    buf = io.BytesIO()
                    np.save(buf, data.codes[i].numpy().astype(dtype), allow_pickle=False)
                    meta = {"text": data.texts[i], "label": data.labels[i], "meta": data.metas[i], "key": data.keys[i]}
                    for name, payload in ((f"{i:09d}.{CODES_EXT}", buf.getvalue()),
                                          (f"{i:09d}.json", json.dumps(meta, ensure_ascii=False).encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))

        atomic_write(path, write)
        paths.append(path)
    return paths
