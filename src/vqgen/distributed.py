"""Sharded training on PyTorch's own stack: models built on the meta device, sharded with FSDP2
(``fully_shard``), materialised shard by shard with a seeded init that gives the same weights
on 1 or N ranks, activation checkpointing (``torch.utils.checkpoint``) and sharded checkpoints
written and resharded by ``torch.distributed.checkpoint`` (DCP).

The recipe every trainer follows under ``fsdp``::

    model = on_meta(lambda: build(cfg))              # no parameter memory yet
    checkpoint_activations(model.blocks)             # optional
    shard(model, units=model.blocks, bf16=True)      # fully_shard each block, then the root
    materialize(model, device, seed, init)           # to_empty + the model's own init, per shard

A checkpoint is ``step-N/dcp/`` (one file per rank, written by :func:`save_sharded`) beside
``resume.pt`` and each component's ``config.json``; :func:`load_sharded` reads it on any
number of ranks, and :func:`export_checkpoint` turns it into one safetensors model in one process.
"""
from __future__ import annotations

import functools
import inspect
import zlib
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.overrides import TorchFunctionMode

from vqgen.errors import VqgenError

M = TypeVar("M", bound=nn.Module)
DCP_DIR = "dcp"


# ----------------------------------------------------------------------------- building
def on_meta(factory: Callable[[], M]) -> M:
    """``factory()`` with every tensor it creates on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return factory()


def checkpoint_activations(blocks: Iterable[nn.Module]) -> int:
    """Recompute each block's activations in the backward pass (non-reentrant
    ``torch.utils.checkpoint``); parameter names are unchanged. Returns the number of blocks."""
    from torch.utils.checkpoint import checkpoint

    n = 0
    for blk in blocks:
        blk.forward = functools.partial(checkpoint, blk.forward, use_reentrant=False)
        n += 1
    return n


def shard(model: nn.Module, units: Iterable[nn.Module], bf16: bool = False, reduce_dtype: str = "fp32") -> None:
    """FSDP2 over the default process group: each of ``units`` (the blocks) is one all-gather
    group, the root holds the rest. ``bf16``: parameters are gathered and computed in bfloat16,
    gradients reduced in ``reduce_dtype``, the root's outputs returned in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if bf16:
        reduce = {"fp32": torch.float32, "bf16": torch.bfloat16}[reduce_dtype]
        inner = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce)
        root = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce, output_dtype=torch.float32)
    else:
        inner = root = MixedPrecisionPolicy()
    for unit in units:
        fully_shard(unit, mp_policy=inner)
    fully_shard(model, mp_policy=root)


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameter storage this process holds (0 on the meta device; a shard under FSDP)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += 0 if local.is_meta else local.numel() * local.element_size()
    return total


# ----------------------------------------------------------------------------- seeded init
_RANDOM_FILLS = {torch.Tensor.normal_, torch.Tensor.uniform_}
_WRITES = {torch.Tensor.zero_, torch.Tensor.fill_, torch.Tensor.copy_}


class _ShardInvariantInit(TorchFunctionMode):
    """Init calls on parameters (``torch.nn.init.*`` and ``Tensor.normal_``/``uniform_``) run on
    the whole parameter on CPU, with a generator seeded by (seed, name, n-th call on that
    parameter); each rank keeps its own shard. The weights thus do not depend on how (or
    whether) the parameters are sharded. Records which parameters were written."""

    def __init__(self, model: nn.Module, seed: int):
        super().__init__()
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.seed, self.calls, self.written = seed, {}, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        is_init = getattr(func, "__module__", None) == "torch.nn.init"
        if is_init and not args and "tensor" in kwargs:  # nn.init hands its tensor over by keyword
            kwargs = dict(kwargs)
            args = (kwargs.pop("tensor"),)
        name = self.names.get(id(args[0])) if args else None
        if name is None or not (is_init or func in _RANDOM_FILLS):
            if name is not None and func in _WRITES:
                self.written.add(name)
            return func(*args, **kwargs)
        target, args = args[0], args[1:]
        self.written.add(name)
        k = self.calls.get(name, 0)
        self.calls[name] = k + 1
        if func in _RANDOM_FILLS or "generator" in inspect.signature(func).parameters:
            kwargs = {**kwargs, "generator": torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{name}:{k}".encode()))}
        full = torch.empty(tuple(target.shape), dtype=torch.float32)
        func(full, *args, **kwargs)  # the whole parameter, on CPU
        if hasattr(target, "to_local"):  # a DTensor shard: keep this rank's part of the whole
            from torch.distributed.tensor import distribute_tensor

            full = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None).to_local()
            target.to_local().copy_(full)
        else:
            target.copy_(full)
        return target


@torch.no_grad()
def materialize(model: nn.Module, device: torch.device | str, seed: int, init: Callable[[nn.Module], None]) -> None:
    """Allocate a meta-built (and possibly sharded) model on ``device`` and initialise it with
    ``init(model)``, the model's own init, made shard-invariant (see :class:`_ShardInvariantInit`).
    Every parameter must be written by ``init``, else a VqgenError names those left empty."""
    model.to_empty(device=device)
    mode = _ShardInvariantInit(model, seed)
    with mode:
        init(model)
    missing = [n for n, _ in model.named_parameters() if n not in mode.written]
    if missing:
        raise VqgenError(f"meta-device init left {len(missing)} parameters uninitialised ({', '.join(missing[:3])})")
    for name, buf in model.named_buffers():
        if buf.is_floating_point() and not torch.isfinite(buf).all():
            raise VqgenError(f"meta-device init: buffer {name} has no value (give the module a reset_parameters)")


def reset_modules(model: nn.Module) -> None:
    """PyTorch's default init of every submodule that has one (``reset_parameters``): what
    constructing the layers did."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()


# ----------------------------------------------------------------------------- DCP checkpoints
def save_sharded(directory: str | Path, state: dict) -> None:
    """Every rank writes its shard of ``state`` (model / optimizer state dicts from
    ``torch.distributed.checkpoint.state_dict``) into ``directory`` (collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=str(directory))


def load_sharded(directory: str | Path, state: dict) -> None:
    """Fill ``state`` in place from a DCP checkpoint written on any number of ranks (resharded
    on load; collective). A missing or unreadable checkpoint raises
    :class:`~vqgen.runtime.CheckpointError` on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from vqgen.runtime import CheckpointError

    path = Path(directory)
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} holds no sharded checkpoint (no .metadata)")
    try:
        dcp.load(state, checkpoint_id=str(path))
    except (CheckpointException, RuntimeError, OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} cannot be loaded ({type(e).__name__}: {first[:160]})") from None


def model_state(module: nn.Module) -> dict:
    """The sharded model state dict (DTensors under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module)


def set_model_state(module: nn.Module, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state)


def optim_state(module: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter names, sharded like the parameters."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, opt)


def set_optim_state(module: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, opt, optim_state_dict=state)


def full_state(module: nn.Module) -> dict:
    """The whole model state dict on rank 0's CPU (empty on other ranks; collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_component_config(model: nn.Module, directory: str | Path) -> None:
    """What :func:`export_checkpoint` needs besides the shards: the component's ``config.json``
    (with its ``model_type``) and its text tokenizer, if it has one."""
    from vqgen.io import CONFIG_NAME, save_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(model.config, directory / CONFIG_NAME, model_type=model.model_type)
    tok = getattr(model, "text_tokenizer", None)
    if tok is not None:
        from vqgen.text.bpe import TOKENIZER_NAME

        tok.save(directory / TOKENIZER_NAME)


def export_checkpoint(checkpoint: str | Path, component: str, out: str | Path) -> Path:
    """One safetensors model from a sharded checkpoint, in this process: the component's
    ``config.json`` builds the model on meta, its CPU storage is allocated once and filled from
    the shards (any number of them), and ``save_pretrained`` writes ``out``."""
    from vqgen.io import CONFIG_NAME, config_from_file, model_class, read_model_type
    from vqgen.runtime import save_final

    if dist.is_initialized():
        raise VqgenError("export runs in one process (not under torchrun)")
    where = Path(checkpoint) / component
    cls = model_class(read_model_type(where))
    cfg = config_from_file(cls.config_class, where / CONFIG_NAME)
    model = on_meta(lambda: cls(cfg))
    model.to_empty(device="cpu")
    state = {component: model.state_dict()}
    load_sharded(Path(checkpoint) / DCP_DIR, state)
    tok = where / "tokenizer.json"
    if tok.is_file():
        from vqgen.text.bpe import TextTokenizer

        model.text_tokenizer = TextTokenizer.load(tok)
    return save_final(model.eval(), out)
