"""Attention masks as data: one :class:`MaskSpec` per pattern, two views of it, two ways to run it.

A stream is ``text_len`` text tokens, then (cross-resolution only) a low-resolution code grid
``low_grid``, then the code grid ``grid``; grids are flattened in raster order (last axis
fastest). A grid is ``(h, w)`` or any number of axes (``(t, h, w)``); a window is an odd width,
one for every axis or one per axis (``window=9`` on a 2D grid is a 9x9 window, clipped at the
borders, not wrapped). Kinds:

* ``full``: every token sees every token.
* ``causal``: a token sees itself and every earlier token (text, then the grid in raster order).
* ``local``: an image token sees every text token and the grid tokens in its window
  (bidirectional); a text token sees every text token and no image token.
* ``causal_local``: ``local`` restricted to keys at or before the query, so a text token sees the
  text tokens up to itself and an image token every text token plus the grid tokens of its window
  that come at or before it in raster order. It is a subset of ``causal``.
* ``cross_res`` (CogView2's direct super-resolution): text tokens see the text; low-resolution
  tokens see the text and the whole low grid (the grid is small, and CogView2 gives it full
  attention); a high-resolution token at ``x`` (per axis) sees the text, the low-resolution tokens
  within ``low_window`` of the low cell under its centre, ``c = floor((x + 1/2) * low / high)``
  (integer ratios give ``x // (high / low)``), and the high-resolution tokens within ``window``
  of itself (bidirectional). Nothing sees a later grid. CogView2's kernel (``sr_pipeline/
  dsr_model.py``) gives high-resolution queries no text keys; here the text is always visible,
  as issue 13 asks, so a model fine-tuned from a text-conditioned checkpoint keeps its condition.
* ``coglm`` (CogView2's cross-modal general language model): some stream positions are *masked*,
  i.e. predicted: the text tokens after the first (``predict_text``) and the grid cells inside
  the ``region`` boxes. A masked token at ``s`` is predicted from the output at ``s - 1`` (no
  sentinel tokens), so a position is *autoregressive* (AR) when it or the next one is masked.
  Context (non-AR) queries see the context keys only, bidirectionally; AR queries see every
  context key and the AR keys at or before themselves::

      ar(s)        = masked(s) or masked(s + 1)
      allowed(q,k) = (not ar(q) and not ar(k)) or (ar(q) and (not ar(k) or k <= q))

  A masked token is never seen by a query that predicts it or an earlier masked token; with
  everything masked (the region = the whole grid) it is exactly ``causal``. The text is then
  masked too, so the context (unmasked image cells) does not see it: text prediction stays
  possible in every sample (captioning from the visible image), as in CogView2's released
  pretraining. :func:`coglm_mask` is the same rule over a batch of per-row masked flags.

Views: ``spec.mask_mod()`` is a ``mask_mod(b, h, q_idx, kv_idx) -> bool`` for
``torch.nn.attention.flex_attention.create_block_mask``, written with index arithmetic (div/mod);
``spec.dense()`` is the ``(N, N)`` bool SDPA mask (True = may attend), built another way (per-axis
band matrices combined as a Kronecker product) so that the two check each other.

Running: :func:`attend` with ``backend="flex"`` calls ``torch.compile(flex_attention)`` with the
spec's block mask (falling back to eager flex, with a warning, if compiling fails; see
:func:`flex_status`), ``"flex_eager"`` calls it uncompiled (this materializes the full score
matrix: no memory saving), ``"sdpa"`` calls ``F.scaled_dot_product_attention`` with the dense mask.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from vqgen.config import require

KINDS = ("full", "causal", "local", "causal_local", "cross_res", "coglm")
BACKENDS = ("flex", "flex_eager", "sdpa")

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _per_axis(window: int | tuple[int, ...], ndim: int, field: str) -> tuple[int, ...]:
    """A window as one odd width per axis (an int applies to every axis)."""
    widths = (window,) * ndim if isinstance(window, int) else tuple(window)
    require(len(widths) == ndim, field, f"needs one width per grid axis ({ndim}), got {window!r}")
    require(all(isinstance(k, int) and k >= 1 and k % 2 == 1 for k in widths), field,
            f"widths must be odd positive ints (a window centred on its token), got {window!r}")
    return widths


@dataclass(frozen=True)
class MaskSpec:
    """Which tokens a token may attend to, for a stream [text][low grid][grid] (see module doc)."""
    kind: str
    grid: tuple[int, ...]
    text_len: int = 0
    window: int | tuple[int, ...] = 1  # odd width per axis of the (high-resolution) grid
    low_grid: tuple[int, ...] | None = None  # cross_res only
    low_window: int | tuple[int, ...] = 1  # cross_res only: odd width per axis in the low grid
    region: tuple = ()  # coglm only: boxes of masked cells, each ((start, stop) per axis)
    predict_text: bool = True  # coglm only: text tokens 1.. are masked (predicted) too

    def __post_init__(self):
        require(self.kind in KINDS, "kind", f"must be one of {KINDS}, got {self.kind!r}")
        require(isinstance(self.text_len, int) and self.text_len >= 0, "text_len", "must be an int >= 0")
        grid = tuple(self.grid)
        require(len(grid) >= 1 and all(isinstance(n, int) and n >= 1 for n in grid), "grid",
                f"must be one or more positive ints, got {self.grid!r}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "window", _per_axis(self.window, len(grid), "window"))
        if self.kind == "cross_res":
            require(self.low_grid is not None, "low_grid", "cross_res needs the low-resolution grid")
            low = tuple(self.low_grid)
            fits = len(low) == len(grid) and all(isinstance(n, int) and 1 <= n <= m for n, m in zip(low, grid))
            require(fits, "low_grid", f"must have the grid's {len(grid)} axes, none larger than the grid, "
                                      f"got {self.low_grid!r}")
            object.__setattr__(self, "low_grid", low)
            object.__setattr__(self, "low_window", _per_axis(self.low_window, len(low), "low_window"))
        else:
            require(self.low_grid is None, "low_grid", f"only cross_res has a low grid, not {self.kind!r}")
        region = tuple(tuple((int(a), int(b)) for a, b in box) for box in self.region)
        require(self.kind == "coglm" or not region, "region", f"only coglm has a masked region, not {self.kind!r}")
        require(all(len(box) == len(grid) and all(0 <= a < b <= n for (a, b), n in zip(box, grid)) for box in region),
                "region", f"boxes must be one (start, stop) per grid axis inside {grid}, got {self.region!r}")
        object.__setattr__(self, "region", region)

    @property
    def low_len(self) -> int:
        return math.prod(self.low_grid) if self.low_grid else 0

    @property
    def grid_start(self) -> int:
        """Stream index of the first token of ``grid``."""
        return self.text_len + self.low_len

    @property
    def seq_len(self) -> int:
        return self.grid_start + math.prod(self.grid)

    def mask_mod(self) -> MaskMod:
        """``mask_mod(b, h, q_idx, kv_idx) -> bool``: index arithmetic only, so it runs on scalar
        tensors under ``vmap`` (flex_attention) and on broadcast index tensors alike."""
        T, S = self.text_len, self.grid_start
        grid, radii = self.grid, tuple(k // 2 for k in self.window)
        kind = self.kind
        if kind == "full":
            return lambda b, h, q, kv: (q >= 0) & (kv >= 0)
        if kind == "causal":
            return lambda b, h, q, kv: kv <= q
        if kind == "local":
            return lambda b, h, q, kv: (kv < T) | ((q >= T) & _near(q - S, kv - S, grid, grid, radii))
        if kind == "causal_local":
            return lambda b, h, q, kv: (kv <= q) & ((kv < T) | _near(q - S, kv - S, grid, grid, radii))
        if kind == "coglm":
            region, text = self.region, self.predict_text

            def masked(s):
                hit = (s >= 1) & (s < T) & text
                for box in region:
                    inside = s >= S
                    for c, (a, z) in zip(_coords(s - S, grid), box):
                        inside = inside & (c >= a) & (c < z)
                    hit = hit | inside
                return hit

            def coglm(b, h, q, kv):
                ar_q, ar_k = masked(q) | masked(q + 1), masked(kv) | masked(kv + 1)
                return (ar_q & (~ar_k | (kv <= q))) | (~ar_q & ~ar_k)
            return coglm
        low, low_radii = self.low_grid, tuple(k // 2 for k in self.low_window)

        def cross_res(b, h, q, kv):
            kv_low = (kv >= T) & (kv < S)
            q_low, q_high = (q >= T) & (q < S), q >= S
            low_keys = kv_low & _near(q - S, kv - T, grid, low, low_radii)
            high_keys = (kv >= S) & _near(q - S, kv - S, grid, grid, radii)
            return (kv < T) | (q_low & kv_low) | (q_high & (low_keys | high_keys))
        return cross_res

    def dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The ``(N, N)`` bool mask (True = may attend) for ``F.scaled_dot_product_attention``,
        built from per-axis band matrices (not from :meth:`mask_mod`)."""
        N, T, S = self.seq_len, self.text_len, self.grid_start
        if self.kind == "full":
            return torch.ones(N, N, dtype=torch.bool, device=device)  # (N, N)
        causal = torch.ones(N, N, dtype=torch.bool, device=device).tril()  # (N, N)
        if self.kind == "causal":
            return causal
        if self.kind == "coglm":
            return coglm_mask(self.masked(device))
        m = torch.zeros(N, N, dtype=torch.bool, device=device)  # (N, N)
        m[:, :T] = True
        m[S:, S:] = _window_block(self.grid, self.grid, self.window, device)  # (L, L)
        if self.kind == "causal_local":
            return m & causal
        if self.kind == "cross_res":
            m[T:S, T:S] = True
            m[S:, T:S] = _window_block(self.grid, self.low_grid, self.low_window, device)  # (L, L0)
        return m

    def masked(self, device=None) -> torch.Tensor:
        """coglm: ``(N,)`` bool, True at the masked (predicted) stream positions, from slices of the grid."""
        cells = torch.zeros(self.grid, dtype=torch.bool, device=device)  # (*grid)
        for box in self.region:
            cells[tuple(slice(a, b) for a, b in box)] = True
        text = torch.full((self.text_len,), self.predict_text, dtype=torch.bool, device=device)  # (T,)
        text[:1] = False  # the first text token has no position before it
        return torch.cat([text, cells.flatten()])  # (N,)

    def block_mask(self, device: torch.device | str = "cpu", block_size: int = 128) -> BlockMask:
        """The flex_attention block mask of this spec (cached per spec, device and block size)."""
        return _block_mask(self, str(torch.device(device)), block_size)


def coglm_mask(masked: torch.Tensor) -> torch.Tensor:
    """The ``coglm`` rule over masked flags ``(..., N)`` bool (True = predicted from the position
    before it) → allowed ``(..., N, N)`` bool (True = may attend); see the module doc."""
    ar = masked | F.pad(masked[..., 1:], (0, 1))  # (..., N): masked, or the predictor of a masked token
    n = masked.shape[-1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=masked.device).tril()  # (N, N): k <= q
    q, k = ar[..., :, None], ar[..., None, :]  # (..., N, 1), (..., 1, N)
    return (q & (~k | earlier)) | (~q & ~k)  # (..., N, N)


def _coords(p: torch.Tensor, grid: tuple[int, ...]) -> list[torch.Tensor]:
    """Per-axis coordinates of flat raster positions ``p`` (any shape) in ``grid``."""
    out = []
    for n in reversed(grid):
        out.append(p % n)
        p = p // n
    return out[::-1]


def _centre(x, q_size: int, k_size: int):
    """The cell of a ``k_size`` axis under the centre of cell ``x`` of a ``q_size`` axis
    (``x`` itself when the sizes match): ``floor((x + 1/2) * k_size / q_size)`` in integers."""
    return (2 * x + 1) * k_size // (2 * q_size)


def parent_cells(grid: tuple[int, ...], low_grid: tuple[int, ...]) -> torch.Tensor:
    """(N,) long: for each cell of ``grid`` (raster order) the raster index of the ``low_grid``
    cell under its centre (the cell ``cross_res`` centres a high-resolution query's low window on)."""
    idx = torch.zeros((), dtype=torch.long)
    for n, m in zip(grid, low_grid):
        idx = idx[..., None] * m + _centre(torch.arange(n), n, m)  # (..., n)
    return idx.flatten()  # (N,)


def _near(pq: torch.Tensor, pk: torch.Tensor, q_grid: tuple[int, ...], k_grid: tuple[int, ...],
          radii: tuple[int, ...]) -> torch.Tensor:
    """Whether key cell ``pk`` of ``k_grid`` lies within ``radii`` (per axis) of the cell under the
    centre of query cell ``pq`` of ``q_grid``; positions outside the grids give garbage the caller masks."""
    ok = None
    for cq, ck, nq, nk, r in zip(_coords(pq, q_grid), _coords(pk, k_grid), q_grid, k_grid, radii):
        axis = (_centre(cq, nq, nk) - ck).abs() <= r
        ok = axis if ok is None else ok & axis
    return ok


def _window_block(q_grid: tuple[int, ...], k_grid: tuple[int, ...], window: tuple[int, ...],
                  device) -> torch.Tensor:
    """``(prod(q_grid), prod(k_grid))`` bool: a query cell sees the key cells within ``window`` of
    the key cell under its centre, as the Kronecker product of one band matrix per axis."""
    block = torch.ones(1, 1, dtype=torch.bool, device=device)  # (1, 1)
    for nq, nk, k in zip(q_grid, k_grid, window):
        centres = _centre(torch.arange(nq, device=device), nq, nk)  # (nq,)
        band = (centres[:, None] - torch.arange(nk, device=device)[None, :]).abs() <= k // 2  # (nq, nk)
        rows, cols = block.shape
        block = (block[:, None, :, None] & band[None, :, None, :]).reshape(rows * nq, cols * nk)  # (Q, K)
    return block


@functools.lru_cache(maxsize=16)
def _block_mask(spec: MaskSpec, device: str, block_size: int) -> BlockMask:
    N = spec.seq_len
    return create_block_mask(spec.mask_mod(), None, None, N, N, device=device, BLOCK_SIZE=block_size)


@functools.lru_cache(maxsize=4)
def _dense(spec: MaskSpec, device: str) -> torch.Tensor:
    return spec.dense(device)  # (N, N)


_FLEX = {"status": "not run", "compiled": None}


def flex_status() -> str:
    """What :func:`attend` with ``backend="flex"`` last ran: ``"compiled"``, ``"eager (compile
    failed: ...)"`` (after one failure every later call runs eagerly, without retrying) or ``"not run"``."""
    return _FLEX["status"]


def _compiled_flex():
    if _FLEX["compiled"] is None:
        _FLEX["compiled"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["compiled"]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec, backend: str = "flex") -> torch.Tensor:
    """Scaled dot-product attention of q, k, v ``(B, H, N, Dh)`` under ``spec`` → ``(B, H, N, Dh)``.

    ``backend``: ``"flex"`` (compiled flex_attention with the block mask; eager flex if compiling
    fails), ``"flex_eager"``, or ``"sdpa"`` (the dense bool mask: the reference).
    """
    require(backend in BACKENDS, "backend", f"must be one of {BACKENDS}, got {backend!r}")
    require(q.shape[-2] == k.shape[-2] == spec.seq_len, "spec",
            f"covers {spec.seq_len} tokens, the inputs have {q.shape[-2]} queries and {k.shape[-2]} keys")
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_dense(spec, str(q.device)))  # (B, H, N, Dh)
    block = spec.block_mask(q.device)
    if backend == "flex" and not _FLEX["status"].startswith("eager"):
        try:
            y = _compiled_flex()(q, k, v, block_mask=block)  # (B, H, N, Dh)
            _FLEX["status"] = "compiled"
            return y
        except Exception as e:  # noqa: BLE001 — any compile failure means: run it eagerly
            _FLEX["status"] = f"eager (compile failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})"
            warnings.warn(f"flex_attention did not compile, running it eagerly: {_FLEX['status']}", stacklevel=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, block_mask=block)  # (B, H, N, Dh)
