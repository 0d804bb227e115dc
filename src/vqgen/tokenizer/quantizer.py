"""Vector quantizer with factorized, l2-normalized codes (ViT-VQGAN) and codebook health stats.

Factorized codes: a linear projection takes the model width ``D`` down to a small lookup space
``d`` (e.g. 768 → 32), the nearest code is found there, and the chosen code is projected back
up to ``D``. l2-normalized codes: encoded vectors and codebook vectors are both put on the unit
sphere, so the nearest code by Euclidean distance is the one with the highest cosine similarity.
With ``lookup_dim=None`` and ``l2_normalize=False`` this is the plain VQ-VAE quantizer.

Training objective (commitment weight ``beta``, ``sg`` = stop-gradient)::

    ||sg[z] - e||^2 + beta * ||z - sg[e]||^2,   z_q = z + sg[e - z]   (straight-through)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.config import require


@dataclass(frozen=True)
class QuantizerConfig:
    codebook_size: int = 8192
    lookup_dim: int | None = 32  # None: look codes up at the model width (no factorization)
    l2_normalize: bool = True
    beta: float = 0.25  # commitment loss weight

    def __post_init__(self):
        require(self.codebook_size >= 2, "codebook_size", "must be at least 2")
        require(self.lookup_dim is None or self.lookup_dim >= 1, "lookup_dim", "must be >= 1 or None")
        require(self.beta >= 0, "beta", "must be >= 0")


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, N, D) straight-through quantized vectors at the model width
    codes: torch.Tensor  # (B, N) long
    loss: torch.Tensor  # () codebook + commitment loss
    lookup: torch.Tensor  # (B, N, d) the encoded vectors in lookup space (normalized if l2)


class VectorQuantizer(nn.Module):
    """Nearest-code lookup in a (factorized, optionally l2-normalized) space of ``lookup_dim``."""

    def __init__(self, cfg: QuantizerConfig, in_width: int, out_width: int | None = None):
        super().__init__()
        self.cfg = cfg
        out_width = out_width or in_width
        self.dim = cfg.lookup_dim or in_width
        factorized = cfg.lookup_dim is not None
        self.down = nn.Linear(in_width, self.dim) if factorized else nn.Identity()
        self.up = nn.Linear(self.dim, out_width) if factorized or self.dim != out_width else nn.Identity()
        # Initialised from a normal distribution (the seed's choice for the normalized codebook).
        self.codebook = nn.Parameter(torch.randn(cfg.codebook_size, self.dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.cfg.l2_normalize else x

    def codebook_embeddings(self) -> torch.Tensor:
        """The lookup vectors (K, d), l2-normalized when the quantizer normalizes."""
        return self._norm(self.codebook.float())

    def to_lookup(self, h: torch.Tensor) -> torch.Tensor:
        """Project encoder features (..., D) into the lookup space (..., d)."""
        return self._norm(self.down(h).float())

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each lookup vector ``z`` (..., d) → (...) long."""
        e = self.codebook_embeddings()  # (K, d)
        flat = z.reshape(-1, self.dim)  # (M, d)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin
        dist = (e * e).sum(1)[None, :] - 2.0 * flat @ e.t()  # (M, K)
        return dist.argmin(dim=1).reshape(z.shape[:-1])

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (...) long → vectors at the model width (..., D)."""
        e = F.embedding(codes, self.codebook_embeddings())  # (..., d)
        return self.up(e)

    def forward(self, h: torch.Tensor) -> QuantizerOutput:
        """Quantize encoder features ``h`` (B, N, D)."""
        z = self.to_lookup(h)  # (B, N, d)
        codes = self.nearest(z.detach())  # (B, N)
        e = F.embedding(codes, self.codebook_embeddings())  # (B, N, d)
        codebook_loss = F.mse_loss(e, z.detach())
        commit_loss = F.mse_loss(z, e.detach())
        loss = codebook_loss + self.cfg.beta * commit_loss
        z_q = z + (e - z).detach()  # straight-through estimator
        return QuantizerOutput(quantized=self.up(z_q.to(h.dtype)), codes=codes, loss=loss, lookup=z)

    @torch.no_grad()
    def restart_codes(self, dead: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Re-initialise the codes flagged in ``dead`` (K,) bool with random rows of ``candidates`` (M, d).

        Returns how many codes were restarted.
        """
        idx = dead.nonzero().squeeze(1)  # (n,)
        n = idx.numel()
        if n == 0 or candidates.shape[0] == 0:
            return 0
        pick = torch.randint(0, candidates.shape[0], (n,), generator=generator, device="cpu")
        new = candidates[pick.to(candidates.device)].to(self.codebook.dtype)  # (n, d)
        self.codebook.data[idx.to(self.codebook.device)] = new.to(self.codebook.device)
        return n


# ----------------------------------------------------------------------------- codebook health
def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Counts of each code in ``codes`` (any shape) → (K,) long."""
    return torch.bincount(codes.reshape(-1).long().cpu(), minlength=codebook_size)


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """Usage (fraction of codes used), perplexity and number of unused codes from counts (K,)."""
    counts = counts.double()
    total = counts.sum().item()
    k = counts.numel()
    used = int((counts > 0).sum().item())
    if total == 0:
        return {"codebook_usage": 0.0, "perplexity": 0.0, "dead_codes": k}
    p = counts / total
    nz = p[p > 0]
    entropy = -(nz * nz.log()).sum().item()
    return {"codebook_usage": used / k, "perplexity": math.exp(entropy), "dead_codes": k - used}


class CodebookMonitor:
    """Training-time codebook health: which codes were used lately, and which have gone dead.

    A code is *dead* when it has not been chosen in the last ``window`` steps. The state is small
    (one step number per code) and is saved with the run's resume state.
    """

    def __init__(self, codebook_size: int, window: int):
        self.window = window
        self.last_used = torch.full((codebook_size,), -1, dtype=torch.long)
        self.counts = torch.zeros(codebook_size, dtype=torch.long)  # since the last report

    def update(self, step: int, counts: torch.Tensor) -> None:
        """Record the code counts (K,) of one (global) training step."""
        self.counts += counts
        self.last_used[counts > 0] = step

    def dead(self, step: int) -> torch.Tensor:
        """(K,) bool: codes unused for more than ``window`` steps (codes never used count from step 0)."""
        return (step - self.last_used.clamp(min=0)) > self.window

    def report(self, step: int) -> dict[str, float]:
        """Stats over the steps since the last report (then reset), plus the current dead count."""
        stats = codebook_stats(self.counts)
        out = {"train/codebook_usage": stats["codebook_usage"], "train/perplexity": stats["perplexity"],
               "train/dead_codes": int(self.dead(step).sum().item())}
        self.counts.zero_()
        return out

    def state_dict(self) -> dict:
        return {"last_used": self.last_used.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.last_used = state["last_used"].clone()
        self.counts = state["counts"].clone()
