"""LoPAR, CogView2's local parallel autoregressive generation (the ``lopar`` decoder): the third
step of hierarchical sampling, iterative super-resolution.

    codes = generate_lopar(model, cond, config=SamplingConfig(decoder="lopar", lopar_remask=0.5,
                           lopar_window=4), generator=torch.Generator().manual_seed(0))  # (B, 16, 16)

After the low stage and the direct super-resolution pass (:mod:`vqgen.sampling.direct_sr`), a
fraction ``lopar_remask`` of the high cells (a random subset per row) is re-masked and written
again. The grid is tiled by ``lopar_window``-sided windows (clipped at the borders); inside a
window every cell has a *local step*, its place in a fixed order:

* ``diagonal`` (the default): the anti-diagonal of its local coordinates, ``step = y % k + x % k``
  (2k - 1 steps; for k = 4)::

      0 1 2 3
      1 2 3 4
      2 3 4 5
      3 4 5 6

* ``raster``: ``step = (y % k) * k + x % k`` (k² steps, one cell a window per step).

Pass ``s`` writes, in every window at once, the re-masked cells of local step ``s``, from one
forward pass that sees the unmasked cells, the cells written by earlier steps, and ``[MASK]``
for the rest: the number of passes depends on the window, not on the grid (a 16x16 grid with 4x4
windows: 7 passes instead of 256). ``lopar_passes > 0`` groups consecutive local steps into that
many passes. Two limits show what it is: with a 1x1 window there is one local step, i.e. one
parallel pass (the direct pass); with a window of the grid's size in ``raster`` order every pass
writes one cell, in raster order: plain autoregression over the masked cells.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from vqgen.config import require
from vqgen.sampling.autoregressive import Generators, _eval
from vqgen.sampling.direct_sr import (HierarchicalStats, direct_pass, hierarchical_model, low_stage, rows_condition,
                                      sr_draw, sr_uniforms)
from vqgen.sampling.settings import LOPAR_ORDERS, SamplingConfig
from vqgen.transformer.base import Condition


def local_steps(grid: tuple[int, ...], window: int, order: str = "diagonal") -> torch.Tensor:
    """(N,) long: the local step of every cell of ``grid`` (raster order) in windows of side ``window``."""
    require(order in LOPAR_ORDERS, "lopar_order", f"must be one of {', '.join(LOPAR_ORDERS)}, got {order!r}")
    coords = torch.meshgrid(*[torch.arange(n) % window for n in grid], indexing="ij")  # per axis (*grid)
    if order == "diagonal":
        return sum(coords).flatten()  # (N,)
    step = torch.zeros(grid, dtype=torch.long)  # (*grid)
    for c in coords:
        step = step * window + c
    return step.flatten()  # (N,)


def pass_of_step(steps: torch.Tensor, passes: int) -> torch.Tensor:
    """(N,) long: the pass that writes each cell, local steps grouped into ``passes`` consecutive
    groups (0 = one pass per local step)."""
    total = int(steps.max()) + 1
    if passes <= 0 or passes >= total:
        return steps
    return steps * passes // total  # (N,)


def remask(u: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, N) bool: per row the ``round(fraction * N)`` cells with the smallest uniforms ``u`` (B, N)."""
    b, n = u.shape
    k = round(fraction * n)
    out = torch.zeros(b, n, dtype=torch.bool, device=u.device)  # (B, N)
    if k:
        out.scatter_(1, u.argsort(1)[:, :k], True)
    return out


def lopar_fill(predict: Callable[[torch.Tensor], torch.Tensor], codes: torch.Tensor, masked: torch.Tensor,
               u: torch.Tensor, grid: tuple[int, ...], mask_id: int, config: SamplingConfig) -> tuple[torch.Tensor, int]:
    """Rewrite the ``masked`` cells (B, N) bool of ``codes`` (B, N) by LoPAR; ``predict(inputs)``
    maps inputs (B, N) (``mask_id`` where still masked) to logits (B, N, V); the cell drawn at a
    pass uses its uniform in ``u`` (B, N). Returns (codes (B, N), forward passes run)."""
    group = pass_of_step(local_steps(grid, config.lopar_window, config.lopar_order), config.lopar_passes)  # (N,)
    group = group.to(codes.device)
    codes, left, passes = codes.clone(), masked.clone(), 0
    for g in range(int(group.max()) + 1):
        todo = left & (group == g)[None]  # (B, N)
        if not bool(todo.any()):
            continue
        logits = predict(codes.masked_fill(left, mask_id))  # (B, N, V)
        codes = torch.where(todo, sr_draw(logits, u, config), codes)
        left &= ~todo
        passes += 1
    return codes, passes


def passes_needed(grid: tuple[int, ...], config: SamplingConfig) -> int:
    """LoPAR's forward passes when every local step has a re-masked cell (the usual case)."""
    group = pass_of_step(local_steps(grid, config.lopar_window, config.lopar_order), config.lopar_passes)
    return int(group.max()) + 1 if config.lopar_remask > 0 and math.prod(grid) else 0


def generate_lopar(model, cond: Condition | None = None, num: int | None = None,
                   config: SamplingConfig = SamplingConfig(decoder="lopar"), generator: Generators = None,
                   progress: bool = False, clusters: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                   stats: HierarchicalStats | None = None) -> torch.Tensor:
    """High-resolution codes (B, *grid) long: the low stage, the direct pass, then LoPAR over a
    re-masked ``lopar_remask`` of the cells (arguments as :func:`vqgen.sampling.autoregressive.generate`;
    ``clusters`` is ignored)."""
    model = hierarchical_model(model)
    device = next(model.parameters()).device
    with _eval(model):
        cond = rows_condition(model, cond, num).to(device)
        low = low_stage(model, cond, config, generator, progress, guidance).flatten(1)  # (B, n)
        u = sr_uniforms(model, low.shape[0], generator, device)  # (3, B, N)
        codes = direct_pass(model, low, cond, u[1], config)  # (B, N)
        masked = remask(u[0], config.lopar_remask)  # (B, N)
        codes, passes = lopar_fill(lambda x: model.sr_logits(low, x, cond), codes, masked, u[2], model.grid,
                                   model.mask_id, config)
    if stats is not None:
        stats.low_steps, stats.sr_passes = model.low_seq_len, 1 + passes
    return codes.view(-1, *model.grid)
