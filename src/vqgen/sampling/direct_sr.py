"""Hierarchical sampling, steps 1 and 2 (the ``direct_sr`` decoder): text → low-resolution codes
written autoregressively → the high-resolution grid in one forward pass of the super-resolution
model (CogView2's direct super-resolution).

    codes = generate_direct_sr(model, cond, config=SamplingConfig(decoder="direct_sr"),
                               generator=torch.Generator().manual_seed(0))   # (B, 16, 16) long

``model`` is a :class:`~vqgen.transformer.hierarchical.HierarchicalSR` carrying its low stage.
The low stage samples with the plain cached autoregressive loop and every setting of the call
(guidance, temperature, top-k/p; no codebook clusters: those belong to the high codebook); the
super-resolution pass draws every high cell at once from its logits with ``sr_temperature`` and
``sr_top_k``.

Randomness: after the low stage, each row draws ``3 N`` uniforms (N = high cells) from its
generator: re-mask ranks, this pass's draws, LoPAR's draws (:mod:`vqgen.sampling.lopar` uses the
same layout, so ``lopar`` with ``lopar_remask=0`` writes exactly these codes). A cell's draw uses
its own uniform, so with one generator per row a row's codes do not depend on the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from vqgen.errors import VqgenError
from vqgen.sampling.autoregressive import Generators, _uniforms, generate
from vqgen.sampling.settings import SamplingConfig
from vqgen.sampling.sjd import draw
from vqgen.transformer.base import Condition


@dataclass
class HierarchicalStats:
    """What one call did: ``low_steps`` codes written one per pass by the low stage, and the
    super-resolution forward passes (``sr_passes``: the direct pass plus LoPAR's)."""

    low_steps: int = 0
    sr_passes: int = 0


def hierarchical_model(model):
    """``model`` if it is a super-resolution model with its low stage, else a one-line error."""
    from vqgen.transformer.hierarchical import HierarchicalSR

    if not isinstance(model, HierarchicalSR):
        raise VqgenError(f"the direct_sr and lopar decoders need a hierarchical model, got {type(model).__name__} "
                         "(use --decoder autoregressive)")
    if model.low is None:
        raise VqgenError("this hierarchical model has no low-resolution stage (a low/ folder beside its weights)")
    return model


def rows_condition(model, cond: Condition | None, num: int | None) -> Condition:
    """The condition of every sampled row (each given row repeated ``num / rows`` times)."""
    cond = cond if cond is not None and cond.batch_size is not None else model.empty_condition(num or 1)
    if cond.prefix_codes is not None:
        raise VqgenError("image completion (prefix codes) is not supported by hierarchical decoders")
    rows = cond.batch_size
    if num is not None and num != rows:
        if num < 1 or num % rows:
            raise VqgenError(f"num={num} is not a multiple of the {rows} conditions given")
        cond = cond.index(torch.arange(rows).repeat_interleave(num // rows))
    return cond


def sr_draw(logits: torch.Tensor, u: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Codes (B, N) drawn from logits (B, N, V) with uniforms (B, N): ``sr_temperature`` (0 =
    argmax) and ``sr_top_k`` (0 = off)."""
    if config.sr_temperature == 0:
        return logits.argmax(-1)  # (B, N)
    logits = logits / config.sr_temperature
    if config.sr_top_k:
        kth = logits.topk(min(config.sr_top_k, logits.shape[-1]), -1).values[..., -1:]  # (B, N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return draw(logits.softmax(-1), u)  # (B, N)


def low_stage(model, cond: Condition, config: SamplingConfig, generator: Generators, progress: bool,
              guidance: torch.Tensor | None) -> torch.Tensor:
    """Low-resolution codes (B, *low_grid) by the cached autoregressive loop of ``model.low``."""
    low_cfg = replace(config, decoder="autoregressive", cluster=0)
    return generate(model.low, cond, num=cond.batch_size, config=low_cfg, generator=generator, progress=progress,
                    guidance=guidance)


def sr_uniforms(model, batch: int, generator: Generators, device) -> torch.Tensor:
    """(3, B, N): re-mask ranks, direct-pass draws, LoPAR draws (the layout in the module doc)."""
    n = model.image_seq_len
    return _uniforms(batch, 3 * n, generator, device).view(batch, 3, n).transpose(0, 1)  # (3, B, N)


def direct_pass(model, low: torch.Tensor, cond: Condition, u: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Every high cell (B, N) written in one forward pass from the low codes and the text."""
    b = low.shape[0]
    blank = torch.full((b, model.image_seq_len), model.mask_id, dtype=torch.long, device=low.device)  # (B, N)
    return sr_draw(model.sr_logits(low, blank, cond), u, config)  # (B, N)


def generate_direct_sr(model, cond: Condition | None = None, num: int | None = None,
                       config: SamplingConfig = SamplingConfig(decoder="direct_sr"), generator: Generators = None,
                       progress: bool = False, clusters: torch.Tensor | None = None,
                       guidance: torch.Tensor | None = None, stats: HierarchicalStats | None = None) -> torch.Tensor:
    """High-resolution codes (B, *grid) long: the low stage, then one super-resolution pass (the
    arguments are those of :func:`vqgen.sampling.autoregressive.generate`; ``clusters`` is ignored):
    :func:`~vqgen.sampling.lopar.generate_lopar` with nothing re-masked."""
    from vqgen.sampling.lopar import generate_lopar  # lopar builds on this module's pieces

    return generate_lopar(model, cond, num, replace(config, lopar_remask=0.0), generator, progress, clusters,
                          guidance, stats)  # no cell re-masked: LoPAR runs no pass
