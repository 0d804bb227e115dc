"""What every training run shares: device and ``torchrun`` setup, autocast, RNG state,
resumable batch order, run logging (progress bar, ``metrics.jsonl``, TensorBoard) and
checkpoints that a crash never half-writes.

A run directory looks like::

    RUN/config.json            the run's full config
    RUN/metrics.jsonl          one JSON object per logged step
    RUN/tb/                    TensorBoard events
    RUN/samples/               PNG grids
    RUN/checkpoints/step-000100/{<component>/config.json, <component>/model.safetensors, resume.pt}
    RUN/checkpoints/latest     name of the newest complete checkpoint
    RUN/data.json              records read and skipped (by reason) by the run's data reader

The lifecycle every trainer shares is a handful of plain functions, called in this order:
:func:`resolve_run_config` (new run, or the saved config with harmless changes),
:func:`report_skips`, :func:`resume_from` (newest readable checkpoint, falling back past corrupt
ones; ``metrics.jsonl`` cut back to it), then per step :class:`Limits` and :func:`save_checkpoint`,
and at the end :func:`save_final`. Learning-rate schedules are :func:`lr_factor`.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import pickle
import random
import shutil
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from vqgen.config import apply_overrides, from_dict, get_preset, to_dict
from vqgen.errors import ConfigError, VqgenError
from vqgen.io import (CONFIG_NAME, WEIGHTS_NAME, atomic_torch_save, atomic_write_json, atomic_write_text, load_config,
                      make_dir, replace_dir, save_config)

C = TypeVar("C")


# ----------------------------------------------------------------------------- devices, ranks
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → the local CUDA device when there is one, else CPU; or an explicit device string."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError, ValueError):
        raise VqgenError(f"unknown device {preference!r} (auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VqgenError("device 'cuda' was asked for but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise VqgenError(f"device {preference!r} was asked for but there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VqgenError("device 'mps' was asked for but MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise VqgenError(f"device {preference!r} is not supported here (auto, cpu, cuda, cuda:N or mps)")
    return device


def init_distributed(device: str = "auto", group: bool = False) -> DistInfo:
    """Join the ``torchrun`` process group if the environment names one (gloo on CPU, nccl on GPU);
    with ``group`` (FSDP) also a one-process group when run without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if (world > 1 or group) and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if world > 1:
            dist.init_process_group(backend=backend)
        else:  # one process: an in-memory store, no address to agree on
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def autocast(device: torch.device, precision: str = "auto"):
    """Autocast context: ``bf16`` where asked (or ``auto`` on a CUDA device that supports it)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise VqgenError(f"unknown precision {precision!r} (auto, fp32, bf16)")


# ----------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states of this process, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "python": list(py_state[1]),
        "python_version": py_state[0],
        "python_gauss": py_state[2],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- batch order
class EpochBatches:
    """Resumable, rank-sharded batch indices over a map-style data set of ``num_items``.

    Each epoch is a permutation seeded by ``(seed, epoch)``; rank ``r`` takes every
    ``world_size``-th index, so ranks never share an item. ``state_dict`` is the position.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        if num_items < batch_size * world_size:
            raise VqgenError(f"data set has {num_items} items, fewer than one global batch "
                             f"({batch_size} x {world_size} ranks)")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.index = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_items, generator=g)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            order = self._order()
            global_bs = self.batch_size * self.world_size
            while self.index < self.batches_per_epoch:
                chunk = order[self.index * global_bs:(self.index + 1) * global_bs]
                self.index += 1
                yield chunk[self.rank::self.world_size]  # (batch_size,)
            self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "items": self.index * self.batch_size * self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """The position, also when written with another number of ranks (or batch size): the
        same items of the epoch count as read, which must be a whole number of batches here."""
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        items, global_bs = int(state.get("items", self.index * self.batch_size * self.world_size)), self.batch_size * self.world_size
        if items % global_bs:
            raise VqgenError(f"the resumed run had read {items} items of its epoch, not a whole number of "
                             f"batches of {self.batch_size} x {self.world_size} ranks")
        self.index = items // global_bs


# ----------------------------------------------------------------------------- logging
class RunLogger:
    """Appends scalars to ``metrics.jsonl`` and TensorBoard, images to ``samples/`` and TensorBoard.

    Only the main rank writes; other ranks get a logger that does nothing.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            make_dir(self.run_dir)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self._tb = SummaryWriter(str(self.run_dir / "tb"))
                except ImportError:  # tensorboard is a dependency, but stay usable without it
                    self._tb = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step}
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            row[k] = v
        with open(self.run_dir / METRICS_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def image(self, tag: str, step: int, image) -> Path | None:
        """Save a PIL image as ``samples/{tag}-{step:06d}.png`` and to TensorBoard."""
        if not self.enabled:
            return None
        path = self.run_dir / "samples" / f"{tag}-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        if self._tb is not None:
            self._tb.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def progress(iterable=None, total: int | None = None, desc: str = "", enabled: bool = True, initial: int = 0):
    """A tqdm progress bar (silent when ``enabled`` is false, e.g. on non-main ranks)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, initial=initial,
                dynamic_ncols=True, leave=True)


# ----------------------------------------------------------------------------- checkpoints
RESUME_NAME = "resume.pt"
METRICS_NAME = "metrics.jsonl"


def save_checkpoint(run_dir: str | Path, step: int, components: dict[str, Any], resume: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write ``checkpoints/step-N/`` (each component via ``save_pretrained`` + ``resume.pt``).

    The directory is written under a temporary name and renamed when complete; ``latest`` is
    then updated atomically, and only then are older checkpoints pruned (keeping ``keep``).
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = ckpt_root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for comp_name, model in components.items():
        model.save_pretrained(tmp / comp_name)
    atomic_torch_save(resume, tmp / RESUME_NAME)
    final = ckpt_root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpt_root / "latest", name + "\n")
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_sharded_checkpoint(run_dir: str | Path, step: int, write_shards: Callable[[Path], None],
                            components: dict[str, Any], resume: dict[str, Any], is_main: bool, keep: int = 2) -> Path:
    """The sharded form of :func:`save_checkpoint`, called on every rank: ``write_shards(dir)``
    (collective: each rank writes its shard, e.g. :func:`vqgen.distributed.save_sharded`) into
    ``step-N/dcp/``; rank 0 adds each component's config (``save_component_config``) and
    ``resume.pt``, renames the finished directory into place and moves ``latest``."""
    from vqgen.distributed import DCP_DIR, save_component_config

    ckpt_root = Path(run_dir) / "checkpoints"
    name = f"step-{step:07d}"
    tmp, final = ckpt_root / f".{name}.tmp", ckpt_root / name
    if is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    write_shards(tmp / DCP_DIR)
    _barrier()
    if is_main:
        for comp_name, model in components.items():
            save_component_config(model, tmp / comp_name)
        atomic_torch_save(resume, tmp / RESUME_NAME)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(ckpt_root / "latest", name + "\n")
        done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def is_sharded(checkpoint: str | Path) -> bool:
    """True for a checkpoint written by :func:`save_sharded_checkpoint`."""
    from vqgen.distributed import DCP_DIR

    return (Path(checkpoint) / DCP_DIR).is_dir()


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    ckpt_root = Path(run_dir) / "checkpoints"
    pointer = ckpt_root / "latest"
    if pointer.is_file():
        path = ckpt_root / pointer.read_text().strip()
        if path.is_dir():
            return path
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and (p / RESUME_NAME).is_file())
    return done[-1] if done else None


class CheckpointError(VqgenError):
    """A checkpoint file that cannot be read: truncated, corrupt, or refused by ``weights_only``."""


def _reason(e: BaseException) -> str:
    """One line saying why a file could not be read (torch's weights_only errors run to 20 lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    pick = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
    return f"{type(e).__name__}: {pick}"[:200]


def load_resume(checkpoint: str | Path, map_location="cpu") -> dict:
    """A checkpoint's ``resume.pt`` (plain tensors and containers only); CheckpointError if unreadable."""
    path = Path(checkpoint) / RESUME_NAME
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} cannot be read ({_reason(e)})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} does not hold a resume state")
    return state


def load_weights(module: torch.nn.Module, directory: str | Path) -> None:
    """Load ``directory/model.safetensors`` into ``module`` strictly; CheckpointError if it cannot be."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(directory) / WEIGHTS_NAME
    device = next(iter(module.parameters()), torch.empty(0)).device
    try:
        load_model(module, str(path), strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be loaded ({_reason(e)})") from None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's checkpoint directories, newest first (the one ``latest`` names leads)."""
    done = sorted((p for p in (Path(run_dir) / "checkpoints").glob("step-*") if p.is_dir()), reverse=True)
    latest = latest_checkpoint(run_dir)
    if latest in done:
        done.remove(latest)
        done.insert(0, latest)
    return done


def resume_from(run_dir: str | Path, restore: Callable[[Path, dict], None], is_main: bool = True) -> dict | None:
    """Resume a run from its newest usable checkpoint; returns that checkpoint's resume state.

    ``restore(checkpoint, state)`` loads the trainer's weights (raising CheckpointError, e.g. from
    :func:`load_weights`, when a file is corrupt). A corrupt checkpoint falls back to the one
    before, saying so in one line; none usable is a VqgenError; no checkpoint at all returns None.
    ``metrics.jsonl`` is cut back to what was logged when the checkpoint was written (emptied
    when the run starts from scratch).
    """
    bad: list[str] = []
    for ckpt in checkpoints(run_dir):
        try:
            state = load_resume(ckpt)
            restore(ckpt, state)
        except CheckpointError as e:
            bad.append(f"{ckpt.name} ({e})")
            continue
        if is_main:
            if bad:
                print(f"vqgen: resuming from {ckpt.name}: newer checkpoint {'; '.join(bad)} is unusable")
            truncate_metrics(run_dir, state)
        return state
    if bad:
        raise VqgenError(f"{run_dir}: no usable checkpoint ({bad[0]}"
                         + (f" and {len(bad) - 1} more" if len(bad) > 1 else "") + "); use a new --out to start over")
    if is_main:
        truncate_metrics(run_dir, {"step": 0, "metrics_bytes": 0})  # killed before its first checkpoint
    return None


def truncate_metrics(run_dir: str | Path, state: dict) -> None:
    """Drop ``metrics.jsonl`` rows logged after the checkpoint ``state`` was written (no step twice)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return
    if "metrics_bytes" in state:
        with open(path, "r+b") as f:
            f.truncate(min(int(state["metrics_bytes"]), os.path.getsize(path)))
        return
    keep = []  # a checkpoint from before byte offsets were recorded: keep rows up to its step
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if line.endswith("\n") and int(json.loads(line)["step"]) <= int(state["step"]):
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(keep))


def metrics_bytes(run_dir: str | Path) -> int:
    """The current length of ``metrics.jsonl`` (recorded in every resume state)."""
    path = Path(run_dir) / METRICS_NAME
    return path.stat().st_size if path.is_file() else 0


def save_final(model, out: str | Path) -> Path:
    """``model.save_pretrained`` into a temporary folder, then swapped into ``out`` in one rename."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    replace_dir(tmp, out)
    return out


def model_dir(path: str | Path, component: str = "model") -> Path:
    """A saved model directory: ``path`` itself, a run's ``RUN/model``, or its latest checkpoint's component."""
    path = Path(path)
    candidates = [path, path / "model"]
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is not None:
        candidates.append(ckpt / component)
    for c in candidates:
        if (c / CONFIG_NAME).is_file() and (c / WEIGHTS_NAME).is_file():
            return c
    raise VqgenError(f"{path} holds no saved model (looked for a model directory, RUN/model and RUN/checkpoints)")


# ----------------------------------------------------------------------------- run config
HARMLESS_FIELDS = frozenset({"steps", "ckpt_every", "log_every", "sample_every", "eval_every", "val_every",
                             "time_limit_min", "cpu_limit_min"})


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_changes(old, new) -> list[tuple[str, Any, Any]]:
    """``(dotted field, old value, new value)`` for every field where two configs differ."""
    a, b = _flat(to_dict(old)), _flat(to_dict(new))
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def requested_config(cls: type[C], family: str, run_dir: str | Path, preset: str | None,
                     overrides: list[str], default_preset: str | None = None) -> C:
    """What a command line asks for: ``preset`` + overrides; with no preset, an existing RUN's
    saved config + overrides (or ``default_preset`` + overrides for a new RUN)."""
    saved = Path(run_dir) / CONFIG_NAME
    if not preset and saved.is_file():
        return apply_overrides(load_config(cls, saved), overrides)
    preset = preset or default_preset
    if not preset:
        raise ConfigError("--preset is required to start a new run")
    return apply_overrides(get_preset(family, preset), overrides)


def resolve_run_config(run_dir: str | Path, requested: C, fitted: tuple[str, ...] = ()) -> tuple[C, bool]:
    """(config, resuming): ``requested`` for a new RUN; for an existing one its saved config.

    Values are compared, not how they were given: the harmless fields (:data:`HARMLESS_FIELDS`:
    steps, intervals, time limits) take the requested values; any other difference is a one-line
    ConfigError naming the field and both values. ``fitted`` names fields the trainer sets from
    the data, which are not compared here.
    """
    saved = Path(run_dir) / CONFIG_NAME
    if not saved.is_file():
        return requested, False
    old = load_config(type(requested), saved)
    merged = to_dict(old)
    for name, was, now in config_changes(old, requested):
        if any(name == f or name.startswith(f + ".") for f in fitted):
            continue
        if name.rsplit(".", 1)[-1] not in HARMLESS_FIELDS:
            raise ConfigError(f"{run_dir} was trained with {name}={json.dumps(was)}, this command asks for "
                              f"{json.dumps(now)}; a resumed run may change only {', '.join(sorted(HARMLESS_FIELDS))} "
                              "(use a new --out to start over)")
        *parents, leaf = name.split(".")
        node = merged
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = now
    return from_dict(type(requested), merged), True


def save_run_config(cfg, run_dir: str | Path) -> None:
    make_dir(run_dir)
    save_config(cfg, Path(run_dir) / CONFIG_NAME)


# ----------------------------------------------------------------------------- data, limits, schedules
DATA_NAME = "data.json"


def report_skips(run_dir: str | Path, source, records: int | None, skipped, is_main: bool = True) -> dict:
    """Print and record in ``RUN/data.json`` the records a run's data reader kept and skipped, by
    reason (the :data:`~vqgen.data.image.SKIP_REASONS` keys); returns that summary. ``records``
    is None when not known (part of a streamed pass)."""
    skipped = dict(sorted(Counter(skipped).items()))
    summary = {"source": str(source), "records": records, "skipped": skipped, "skipped_total": sum(skipped.values())}
    if is_main:
        detail = ", ".join(f"{k}: {v}" for k, v in skipped.items())
        print(f"vqgen: {source}: {'?' if records is None else records} records"
              + (f", {summary['skipped_total']} skipped ({detail})" if skipped else ", none skipped"))
        make_dir(run_dir)
        atomic_write_json(Path(run_dir) / DATA_NAME, summary)
    return summary


class Limits:
    """Wall-clock and CPU-time budgets (minutes, 0 = none) that continue across resumes."""

    def __init__(self, time_limit_min: float = 0.0, cpu_limit_min: float = 0.0, state: dict | None = None):
        self.time_limit_min, self.cpu_limit_min = time_limit_min, cpu_limit_min
        state = state or {}
        self._t0 = time.perf_counter() - float(state.get("elapsed", 0.0))
        self._c0 = time.process_time() - float(state.get("cpu_elapsed", 0.0))

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    @property
    def cpu_elapsed(self) -> float:
        return time.process_time() - self._c0

    def reached(self, step: int | None = None) -> bool:
        """True once a budget is spent (saying so in one line when ``step`` is given)."""
        hit = ((self.time_limit_min > 0 and self.elapsed >= self.time_limit_min * 60)
               or (self.cpu_limit_min > 0 and self.cpu_elapsed >= self.cpu_limit_min * 60))
        if hit and step is not None:
            print(f"vqgen: time limit reached at step {step}; saving a checkpoint")
        return hit

    def state_dict(self) -> dict:
        return {"elapsed": self.elapsed, "cpu_elapsed": self.cpu_elapsed}


def lr_factor(step: int, steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
              schedule: str = "cosine", decay_start: int = 0) -> float:
    """Linear warmup over ``warmup_steps``, then cosine or exponential decay to ``min_lr_ratio``
    at ``steps`` (exponential from ``decay_start``), or ``constant``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    start = max(warmup_steps, decay_start if schedule == "exponential" else warmup_steps)
    if step < start:
        return 1.0
    frac = min(1.0, (step - start) / max(1, steps - start))
    if schedule == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    if schedule == "exponential":
        return min_lr_ratio ** frac
    raise ConfigError(f"unknown learning-rate schedule {schedule!r} (cosine, exponential, constant)")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> float:
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


# ----------------------------------------------------------------------------- init_from, freezing
def freeze(model: torch.nn.Module, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Turn off ``requires_grad`` of every parameter whose name matches a glob pattern; returns
    their names. A pattern that matches nothing is a ConfigError (a typo must not train all)."""
    names = [n for n, _ in model.named_parameters()]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ConfigError(f"freeze pattern {pat!r} matches no parameter (names look like {names[0]!r})")
    frozen = []
    for n, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(n, pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(n)
    return frozen


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
