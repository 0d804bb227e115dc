"""The contract between token transformers and samplers.

Every model family (``vim``, ``parti``, ``unified``) is a :class:`TokenModel`:

* training: ``forward(codes, cond) -> TokenOutput`` (teacher forcing over the whole image) and
  ``compute_loss(codes, cond) -> (loss, metrics)``;
* sampling: ``cache = model.new_cache(batch, device=..., dtype=...)``, then
  ``logits = model.prefill(cond, cache)`` for the first image token still to be written (after the
  condition and any image prefix), then ``logits = model.decode_step(tokens, cache)`` once per
  sampled token. Logits are always ``(B, codebook_size)`` float32 over image codes;
* speculative decoding: ``logits = model.decode_window(tokens, cache)`` appends ``L`` codes
  ``(B, L)`` in one forward pass (causal inside the window) and returns ``(B, L, V)``: row ``i``
  is what ``decode_step`` would return after the first ``i + 1`` of them. ``cache.rewind(n)``
  then forgets every position from ``n`` on (the rejected guesses), so the next call overwrites them.

A sampler never looks inside the model: the cache is static (per-layer ``(B, H, T_max, Dh)``
tensors written in place at ``cache.pos``, a 0-d tensor), so a decode step has fixed shapes and
can be compiled. Classifier-free guidance batches the condition with ``cond.null()`` in one call::

    both = Condition.cat([cond, cond.null()])          # rows 0..B-1 cond, B..2B-1 null
    cache = model.new_cache(2 * B)
    logits = model.prefill(both, cache)                 # (2B, V)
    for _ in range(model.image_seq_len - cond.prefix_len):
        c, u = logits.chunk(2)
        tok = sample(u + scale * (c - u))               # (B,)
        logits = model.decode_step(tok.repeat(2), cache)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Iterable

import torch
from torch import nn

from vqgen.errors import VqgenError

NULL_CLASS = -1  # class id meaning "no class": the null condition for classifier-free guidance


@dataclass
class Condition:
    """What an image is conditioned on; every field is optional and batched on dim 0.

    ``class_ids`` (B,) long, ``NULL_CLASS`` for the null class; ``text_ids`` (B, L) long with
    ``text_mask`` (B, L) bool (True = real token; a row with no True is the null text);
    ``prefix_codes`` (B, k) long: the first ``k`` image codes in raster order (``k = rows * w`` to
    continue from the first rows, the seed's FIG. 2). The prefix is content, not a guidance
    condition, so ``null()`` keeps it.
    """

    class_ids: torch.Tensor | None = None
    text_ids: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    prefix_codes: torch.Tensor | None = None

    def __post_init__(self):
        if (self.text_ids is None) != (self.text_mask is None):
            raise VqgenError("Condition: text_ids and text_mask go together")
        sizes = {t.shape[0] for t in self._tensors()}
        if len(sizes) > 1:
            raise VqgenError(f"Condition: fields have different batch sizes {sorted(sizes)}")
        if self.text_ids is not None and self.text_ids.shape != self.text_mask.shape:
            raise VqgenError("Condition: text_ids and text_mask have different shapes")

    def _tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None]

    @property
    def batch_size(self) -> int | None:
        """Rows in the batch, or None for an empty condition (unconditional, batch set by the cache)."""
        ts = self._tensors()
        return ts[0].shape[0] if ts else None

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix_codes is None else self.prefix_codes.shape[1]

    def to(self, device) -> "Condition":
        return Condition(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                            for f in fields(self)})

    def null(self) -> "Condition":
        """The null condition with the same shapes: null class, empty text, the same prefix."""
        return replace(
            self,
            class_ids=None if self.class_ids is None else torch.full_like(self.class_ids, NULL_CLASS),
            text_ids=None if self.text_ids is None else torch.zeros_like(self.text_ids),
            text_mask=None if self.text_mask is None else torch.zeros_like(self.text_mask),
        )

    def where(self, drop: torch.Tensor) -> "Condition":
        """Rows where ``drop`` (B,) bool is True replaced by the null condition."""
        null = self.null()

        def pick(a, b, f):
            if a is None:
                return None
            keep = ~drop.view(-1, *([1] * (a.dim() - 1))).to(a.device)
            return torch.where(keep, a, b) if f != "prefix_codes" else a

        return Condition(**{f.name: pick(getattr(self, f.name), getattr(null, f.name), f.name) for f in fields(self)})

    def drop(self, p: float, generator: torch.Generator | None = None) -> "Condition":
        """Condition dropout: each row becomes the null condition with probability ``p``."""
        b = self.batch_size
        if b is None or p <= 0:
            return self
        drop = torch.rand(b, generator=generator) < p  # (B,)
        return self.where(drop)

    def index(self, idx) -> "Condition":
        return Condition(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[idx])
                            for f in fields(self)})

    @staticmethod
    def cat(conds: Iterable["Condition"]) -> "Condition":
        """Concatenate conditions of the same kind along the batch (e.g. cond rows then null rows)."""
        conds = list(conds)
        out = {}
        for f in fields(Condition):
            vals = [getattr(c, f.name) for c in conds]
            if all(v is None for v in vals):
                out[f.name] = None
            elif any(v is None for v in vals):
                raise VqgenError(f"Condition.cat: field {f.name} is set in some conditions only")
            else:
                out[f.name] = torch.cat(vals)
        return Condition(**out)


@dataclass
class TokenOutput:
    """``logits`` (B, N, V): position i predicts image code i. ``text_logits`` (B, L-1, Vt) for
    models that also predict their text (the unified stream), else None."""

    logits: torch.Tensor
    text_logits: torch.Tensor | None = None


class KVCache:
    """A static, preallocated key/value cache for ``num_layers`` self-attention layers.

    ``k[i]``, ``v[i]``: (B, H, T_max, Dh), written in place; ``pos``: 0-d long tensor, the number
    of stream positions already written. ``cross`` holds per-layer (k, v) of a fixed memory (the
    encoded text of encoder-decoder models) with ``cross_mask`` (B, M) bool, and ``pooled`` (B, D)
    a condition vector added to every input (Parti's pooled text with ``text_pool``), set by ``prefill``.
    """

    def __init__(self, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 device=None, dtype=None):
        shape = (batch, heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.cross_mask: torch.Tensor | None = None
        self.pooled: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def rewind(self, length: int) -> None:
        """Keep the first ``length`` stream positions; later keys/values are stale and get
        overwritten by the next write (attention never reaches past a query's own position)."""
        if not 0 <= length <= int(self.pos):
            raise VqgenError(f"cannot rewind a cache at position {int(self.pos)} to {length}")
        self.pos.fill_(length)

    def reset(self) -> None:
        """Forget everything written (reuse the buffers for a new batch of the same size)."""
        self.pos.zero_()
        self.cross, self.cross_mask, self.pooled = None, None, None


class TokenModel(nn.Module):
    """Base class of the token transformers; subclasses implement the abstract methods.

    Attributes every family sets: ``config``, ``grid`` ((h, w), or (t, h, w) for video),
    ``image_seq_len`` (the grid's size, raster order with the last axis fastest),
    ``codebook_size``, ``cond_kind`` ("none" | "class" | "text").
    """

    config: object
    cond_kind: str = "none"

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.config.grid)

    @property
    def image_seq_len(self) -> int:
        return math.prod(self.grid)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_blocks(self) -> int:
        """Blocks whose output ``features`` can return (layer 1..num_blocks)."""
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------
    def forward(self, codes: torch.Tensor, cond: Condition | None = None) -> TokenOutput:
        """Teacher-forced logits for all image positions; ``codes`` (B, N) or (B, *grid)."""
        raise NotImplementedError

    def compute_loss(self, codes: torch.Tensor, cond: Condition | None = None) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over image codes; returns (loss, {"image_loss": ...})."""
        codes = self.flat_codes(codes)
        out = self(codes, cond)
        loss = nn.functional.cross_entropy(out.logits.float().flatten(0, 1), codes.flatten())
        return loss, {"image_loss": loss.detach()}

    # -- sampling ---------------------------------------------------------------------------
    @property
    def cache_len(self) -> int:
        """Positions a full sample writes into the cache: a start slot and the image codes."""
        return self.image_seq_len + 1

    def new_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """A cache for ``batch`` rows, long enough for a full sample (``cache_len``) by default."""
        c = self.config
        device = device or self.head.weight.device
        return KVCache(c.depth, batch, c.heads, max_len or self.cache_len, c.dim // c.heads,
                       device=device, dtype=dtype or self.head.weight.dtype)

    def prefill(self, cond: Condition | None, cache: KVCache) -> torch.Tensor:
        """Write the condition (and prefix codes) into an empty cache; logits (B, V) for the next code."""
        raise NotImplementedError

    def decode_step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append sampled image codes ``tokens`` (B,); logits (B, V) for the code after them."""
        raise NotImplementedError

    def decode_window(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append ``L`` image codes ``tokens`` (B, L) at once; logits (B, L, V), row ``i`` for the
        code after ``tokens[:, i]``. Families override this with one forward pass; this fallback
        runs ``L`` decode steps."""
        return torch.stack([self.decode_step(tokens[:, i], cache) for i in range(tokens.shape[1])], 1)  # (B, L, V)

    # -- representation ---------------------------------------------------------------------
    def features(self, codes: torch.Tensor, layer: int, cond: Condition | None = None) -> torch.Tensor:
        """Hidden states (B, T, D) after block ``layer`` (1-based) over all image codes."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------
    def flat_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, *grid) or (B, N) → (B, N) long, checked against the model's grid."""
        if codes.dim() > 2:
            if tuple(codes.shape[1:]) != self.grid:
                raise VqgenError(f"code grid {tuple(codes.shape[1:])} does not match the model's {self.grid}")
            codes = codes.flatten(1)
        if codes.dim() != 2 or codes.shape[1] > self.image_seq_len:
            raise VqgenError(f"codes must be (B, {', '.join(map(str, self.grid))}) or (B, N<={self.image_seq_len}), "
                             f"got {tuple(codes.shape)}")
        return codes.long()

    def empty_condition(self, batch: int, device=None) -> Condition:
        """The null condition of this model's kind for ``batch`` rows (unconditional sampling)."""
        if self.cond_kind == "class":
            return Condition(class_ids=torch.full((batch,), NULL_CLASS, dtype=torch.long, device=device))
        if self.cond_kind == "text":
            n = self.config.text.max_len
            return Condition(text_ids=torch.zeros(batch, n, dtype=torch.long, device=device),
                             text_mask=torch.zeros(batch, n, dtype=torch.bool, device=device))
        return Condition()


class TextModelMixin:
    """Text handling for text-conditioned families: prompts → ``Condition`` with the model's own
    tokenizer (a trained BPE saved as ``tokenizer.json`` beside the weights, or the frozen
    encoder's tokenizer), and the frozen encoder itself, loaded on first use and kept out of the
    module tree (so it is neither trained, saved nor sharded)."""

    text_tokenizer = None  # vqgen.text.bpe.TextTokenizer for text.encoder=trained

    @property
    def frozen_encoder(self):
        enc = self.__dict__.get("_frozen_encoder")
        if enc is None:
            from vqgen.text.encoder import FrozenTextEncoder

            enc = FrozenTextEncoder(self.config.text.pretrained_dir)
            self.__dict__["_frozen_encoder"] = enc
        return enc

    def tokenize(self, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → ids (B, L) long, mask (B, L) bool with L = ``text.max_len``; None/"" is the null text."""
        n = self.config.text.max_len
        if self.config.text.encoder == "pretrained":
            return self.frozen_encoder.encode(texts, n)
        if self.text_tokenizer is None:
            raise VqgenError("this model has no text tokenizer (tokenizer.json is missing beside its weights)")
        return self.text_tokenizer.encode(texts, n)

    def text_condition(self, texts: list[str | None], device=None, prefix_codes=None) -> Condition:
        ids, mask = self.tokenize(texts)
        return Condition(text_ids=ids.to(device), text_mask=mask.to(device), prefix_codes=prefix_codes)

    def with_text(self, cond: Condition | None, batch: int, device) -> Condition:
        """``cond`` on ``device``, with the null text filled in where it has none."""
        cond = cond or Condition()
        if cond.text_ids is None:
            null = self.empty_condition(batch, device)
            cond = Condition(text_ids=null.text_ids, text_mask=null.text_mask, prefix_codes=cond.prefix_codes)
        return cond.to(device)

    def save_pretrained(self, directory):
        from vqgen.text.bpe import TOKENIZER_NAME

        directory = super().save_pretrained(directory)
        if self.text_tokenizer is not None:
            self.text_tokenizer.save(directory / TOKENIZER_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        from pathlib import Path

        from vqgen.text.bpe import TOKENIZER_NAME, TextTokenizer

        model = super().from_pretrained(directory, device=device)
        path = Path(directory) / TOKENIZER_NAME
        if path.is_file():
            model.text_tokenizer = TextTokenizer.load(path)
        return model
