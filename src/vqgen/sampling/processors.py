"""Logits processors and the final draw.

A processor maps logits ``(B, V)`` to logits of the same shape, setting the tokens it removes to
``-inf``; processors compose left to right (:class:`Chain`). Each takes the step's
``torch.Generator`` so that stochastic processors stay seeded; the built-in ones are
deterministic and ignore it. The draw itself (:func:`sample_from`) is inverse-CDF sampling with
one uniform number per row, drawn ahead of the loop, so a step allocates no random state and a
row's randomness does not depend on its batch.

Built in: :class:`Temperature`, :class:`TopK`, :class:`TopP` and CogView2's
:class:`ClusterTopK` (truncate over clusters of similar codebook entries by their summed
probability, then sample inside the kept clusters). The seed's default, plain sampling at
temperature 1.0 with no truncation, is the empty chain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from vqgen.errors import ConfigError


class LogitsProcessor(Protocol):
    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``logits`` (B, V) → (B, V), removed tokens at ``-inf``."""


@dataclass(frozen=True)
class Temperature:
    """Divide logits by ``t > 0`` (t < 1 sharpens, t > 1 flattens). Greedy decoding is not a
    temperature: use ``SamplingConfig(temperature=0)``, which takes the argmax."""

    t: float

    def __post_init__(self):
        if not self.t > 0:
            raise ConfigError(f"temperature must be > 0, got {self.t}")

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return logits / self.t  # (B, V)


@dataclass(frozen=True)
class TopK:
    """Keep the ``k`` most likely tokens of each row (ties with the k-th are kept too)."""

    k: int

    def __post_init__(self):
        if self.k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.k}")

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, float("-inf"))  # (B, V)


@dataclass(frozen=True)
class TopP:
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability sums to at
    least ``p`` (the most likely token is always kept)."""

    p: float

    def __post_init__(self):
        if not 0.0 < self.p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.p}")

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)  # (B, V)
        before = probs.cumsum(-1) - probs  # (B, V): mass of the strictly more likely tokens
        drop_sorted = before >= self.p  # (B, V)
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V) back in token order
        return logits.masked_fill(drop, float("-inf"))


class ClusterTopK:
    """CogView2's cluster sampling: group the codebook into clusters of similar embeddings, rank
    the clusters of each row by their summed probability, keep the ``k`` most likely clusters
    whole and sample among their tokens.

    Top-k over single tokens can cut a visually uniform region's many near-duplicate codes
    (CogView2's ~42 "white" codes) although their summed mass is large; cluster truncation keeps
    or drops such a group together. ``assignment`` (V,) long in ``[0, C)``: each code's cluster
    (see :func:`vqgen.sampling.clusters.fit_clusters`).
    """

    def __init__(self, assignment: torch.Tensor, k: int):
        if assignment.dim() != 1:
            raise ConfigError(f"cluster assignment must be (V,), got {tuple(assignment.shape)}")
        if k < 1:
            raise ConfigError(f"cluster must be >= 1 clusters, got {k}")
        self.assignment = assignment.long()
        self.num_clusters = int(self.assignment.max()) + 1
        self.k = min(k, self.num_clusters)

    def to(self, device) -> "ClusterTopK":
        self.assignment = self.assignment.to(device)
        return self

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, v = logits.shape
        if v != self.assignment.shape[0]:
            raise ConfigError(f"cluster assignment covers {self.assignment.shape[0]} codes, logits have {v}")
        probs = logits.softmax(-1)  # (B, V)
        mass = probs.new_zeros(b, self.num_clusters).index_add_(1, self.assignment, probs)  # (B, C)
        kth = mass.topk(self.k, dim=-1).values[:, -1:]  # (B, 1)
        keep_cluster = mass >= kth  # (B, C)
        keep = keep_cluster.gather(1, self.assignment.expand(b, v))  # (B, V)
        return logits.masked_fill(~keep, float("-inf"))


class Chain:
    """Apply processors left to right."""

    def __init__(self, processors: Sequence[LogitsProcessor]):
        self.processors = list(processors)

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for proc in self.processors:
            logits = proc(logits, generator)
        return logits  # (B, V)

    def __len__(self) -> int:
        return len(self.processors)


def sample_from(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits)`` (B, V) by inverse CDF with uniforms ``u``
    (B,) in [0, 1). Tokens at ``-inf`` (probability 0) are never drawn. Returns (B,) long."""
    probs = logits.float().softmax(-1)  # (B, V)
    cdf = probs.cumsum(-1)  # (B, V)
    total = cdf[:, -1:]  # (B, 1)
    x = torch.minimum(u[:, None].to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))  # (B, 1)
    # the first index whose CDF exceeds x; a zero-probability token repeats its predecessor's CDF
    # value, so it can never be the first to exceed x
    return torch.searchsorted(cdf, x, right=True).squeeze(1)  # (B,)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row, (B,) long."""
    return logits.argmax(-1)
