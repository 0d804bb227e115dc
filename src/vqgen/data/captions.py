"""Several captions per record: which one a training step reads.

A record's captions are ``meta["texts"]`` when it holds a non-empty list of strings (``vqgen data
shapes --captions K`` writes one; ``vqgen tokenizer encode`` carries ``meta`` into code shards),
else its one ``text``. The pick of a record at a step is a function of (seed, step, stream, row)
alone, so a resumed run reads the captions an uninterrupted one would, with no state to save.
Streamed batches pick the same way (:func:`pick_texts`) from each record's ``meta``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def caption_lists(texts: list[str | None], metas: list[dict]) -> list[list[str | None]]:
    """Per record, its captions: ``meta["texts"]`` if that is a non-empty list of strings, else ``[text]``."""
    out = []
    for text, meta in zip(texts, metas):
        alts = (meta or {}).get("texts")
        ok = isinstance(alts, list) and alts and all(isinstance(a, str) and a for a in alts)
        out.append(list(alts) if ok else [text])
    return out


def pick_captions(counts: torch.Tensor, seed: int, step: int, stream: int = 0, canonical: float = 0.0) -> torch.Tensor:
    """One index in ``[0, counts[i])`` per row (B,), fixed by (seed, step, stream): uniform, or with
    ``canonical`` > 0 index 0 (the canonical caption) for that share of the rows and uniform for the rest."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + stream) % (2 ** 63))
    u = torch.rand(counts.shape[0], generator=g, dtype=torch.float64)  # (B,)
    picks = torch.minimum((u * counts).long(), counts - 1)  # (B,)
    if canonical > 0:
        first = torch.rand(counts.shape[0], generator=g, dtype=torch.float64) < canonical  # (B,)
        picks = torch.where(first, torch.zeros_like(picks), picks)
    return picks


def pick_texts(texts: list[str | None], metas: list[dict], seed: int, step: int, stream: int = 0,
               canonical: float = 0.0) -> list[str | None]:
    """One caption per row of a streamed batch: row ``i`` reads the caption of its
    :func:`caption_lists` that :func:`pick_captions` picks for (seed, step, stream, row ``i``), the
    same pick the in-memory path (:meth:`CaptionBank.choose`) makes for a batch in that order."""
    lists = caption_lists(texts, metas)
    picks = pick_captions(torch.tensor([len(c) for c in lists], dtype=torch.long), seed, step, stream,
                          canonical)  # (B,)
    return [c[k] for c, k in zip(lists, picks.tolist())]


@dataclass
class CaptionBank:
    """All captions of all records encoded once: ``ids``/``mask`` (M, L), record ``i``'s captions at
    rows ``start[i] .. start[i] + count[i]``."""

    ids: torch.Tensor
    mask: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor

    @classmethod
    def build(cls, lists: list[list[str]], encode: Callable, max_len: int) -> "CaptionBank":
        """``encode(texts, max_len) -> (ids, mask)`` over every caption of every record."""
        count = torch.tensor([len(c) for c in lists], dtype=torch.long)  # (N,)
        ids, mask = encode([t for c in lists for t in c], max_len)  # (M, L) x2
        return cls(ids=ids, mask=mask, start=torch.cumsum(count, 0) - count, count=count)

    def choose(self, idx: torch.Tensor, seed: int, step: int, stream: int = 0, canonical: float = 0.0) -> torch.Tensor:
        """Which caption of each record ``idx`` (B,) this step reads: indices into its list (B,)."""
        return pick_captions(self.count[idx.cpu()], seed, step, stream, canonical)

    def pick(self, idx: torch.Tensor, seed: int, step: int, stream: int = 0,
             canonical: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One caption of each record ``idx`` (B,) for this step: (ids, mask) (B, L)."""
        rows = self.start[idx.cpu()] + self.choose(idx, seed, step, stream, canonical)  # (B,)
        return self.ids[rows], self.mask[rows]
