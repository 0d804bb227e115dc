"""The temporal channel's attention masks (CogVideo's dual-channel attention, temporal half).

A clip of ``F`` frames on a code grid ``(h, w)`` (``N = h * w`` cells) runs as ``F`` image streams
through the inherited model's spatial attention; each frame's block is ``N + 1`` slots::

    slot 0 = the begin-of-image separator (it predicts cell 0), slot p >= 1 holds the code of cell p - 1

so the query at slot ``p`` predicts cell ``min(p, N - 1)`` (its window centre) and the key at slot
``s >= 1`` holds cell ``s - 1``. The temporal channel's keys are ``[text (T), frame rate (1),
frame 0 block, ..., frame F-1 block]`` and its queries the frame blocks. A query sees:

* always the text and the frame-rate token (so no row is empty);
* ``key`` (key frames, causal over frames): cells of earlier frames ``g < f`` (at most
  ``frame_window`` back; 0 = all) within the 3D local window (``window`` cells per axis around its
  centre), and of its own frame the separator and the windowed cells at or before its own slot;
* ``interp`` (interpolation, ``known`` frames given): every query sees the windowed cells of every
  known frame, before and after it (bidirectional over its neighbours); a target frame also sees
  its own separator, its own slot and the windowed cells before it; no frame sees another target frame, so the
  inserted frames are independent given their neighbours (written in parallel).

The windows slide with the query (a 3D local window centred on its cell, as in CogView2's local
attention) rather than Swin's fixed shifted partitions: every query gets the same neighbourhood.
"""
from __future__ import annotations

import torch

from vqgen.config import require


def _slot_cells(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per slot of a frame block: the query's centre cell and the key's cell (-1 for the separator)."""
    slots = torch.arange(n + 1, device=device)  # (N + 1,)
    return slots.clamp(max=n - 1), slots - 1


def temporal_mask(grid: tuple[int, int], frames: int, text_len: int, window: int, mode: str = "key",
                  known: torch.Tensor | None = None, frame_window: int = 0, device=None) -> torch.Tensor:
    """The temporal channel's mask ``(F * (N + 1), text_len + 1 + F * (N + 1))`` bool (True = may
    attend) for ``mode`` ``"key"`` or ``"interp"`` (``known``: (F,) bool, the given frames)."""
    require(mode in ("key", "interp"), "mode", f"must be 'key' or 'interp', got {mode!r}")
    require(window >= 1 and window % 2 == 1, "window", f"must be an odd width, got {window}")
    h, w = grid
    n, r = h * w, window // 2
    q_cell, k_cell = _slot_cells(n, device)  # (S,), (S,)
    near = (((q_cell[:, None] // w) - (k_cell[None, :] // w)).abs() <= r) & \
           (((q_cell[:, None] % w) - (k_cell[None, :] % w)).abs() <= r) & (k_cell[None, :] >= 0)  # (S, S)
    slots = torch.arange(n + 1, device=device)  # (S,)
    own = (slots[None, :] <= slots[:, None]) & (near | (slots[None, :] == 0) | (slots[None, :] == slots[:, None]))  # (S, S)
    f = torch.arange(frames, device=device)  # (F,)
    if mode == "key":
        back = f[:, None] - f[None, :]  # (F, F): how far back the key frame is
        earlier = (back > 0) & ((back <= frame_window) if frame_window > 0 else True)  # (F, F)
        same = torch.eye(frames, dtype=torch.bool, device=device)  # (F, F)
        block = earlier[:, None, :, None] & near[None, :, None, :]  # (F, S, F, S)
        block = block | (same[:, None, :, None] & own[None, :, None, :])
    else:
        require(known is not None and known.shape == (frames,), "known", f"needs one flag per frame ({frames})")
        known = known.to(device=device, dtype=torch.bool)
        block = known[None, None, :, None] & near[None, :, None, :]  # (F, S, F, S): every known frame
        target_self = (~known[:, None] & torch.eye(frames, dtype=torch.bool, device=device))  # (F, F)
        block = block | (target_self[:, None, :, None] & own[None, :, None, :])
    s = frames * (n + 1)
    out = torch.zeros(s, text_len + 1 + s, dtype=torch.bool, device=device)  # (Q, K)
    out[:, : text_len + 1] = True
    out[:, text_len + 1:] = block.reshape(s, s)
    return out
