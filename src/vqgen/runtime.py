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
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from vqgen.errors import VqgenError
from vqgen.io import atomic_torch_save, atomic_write_text


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
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VqgenError("device 'cuda' was asked for but no CUDA device is available")
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group if the environment names one (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
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
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


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
            self.run_dir.mkdir(parents=True, exist_ok=True)
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
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
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


def load_resume(checkpoint: str | Path, map_location="cpu") -> dict:
    return torch.load(Path(checkpoint) / RESUME_NAME, map_location=map_location, weights_only=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
