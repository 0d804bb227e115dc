"""Unified decoder (ruDALL-E / CogView): text tokens then image tokens in one causal stream.

Text and image tokens have their own embedding tables, their own position embeddings (1D for
text, learned 2D for the image) and their own output heads. Stream (L text slots, padded with
``[PAD]``, which the model sees like any token; the null text is all padding)::

    [t_0 ... t_{L-1}, c_0 ... c_{N-2}]   predicts   [t_1 ... t_{L-1}] and [c_0 ... c_{N-1}]

The loss weighs the two parts: ``w * text + (1 - w) * image`` (``text_loss_weight``; ruDALL-E
weighs image tokens 7:1). ``text_attention_bias`` adds CogView2's constant to the scores from
image positions to text positions.

With ``image_first=True`` the stream is reversed, CogView's text-after-image model::

    [c_0 ... c_{N-1}, t_0 ... t_{L-2}]   predicts   [c_1 ... c_{N-1}] and [t_0 ... t_{L-1}]

It cannot sample images from a text; it scores how well a caption fits an image
(:meth:`Unified.caption_nll`, used for post-selection as a pipeline's reranker).

**CogLM** (CogView2's objective, ``coglm_mix > 0``, text-first only): in training each sample is,
with probability ``1 - coglm_mix``, the plain stream above, and with probability ``coglm_mix`` a
*masked-region* sample: the union of ``round(coglm_patches * N / coglm_patch**2)`` random
``coglm_patch``-sided boxes of the grid (they may overlap) is masked, i.e. predicted in raster
order from the previous position (no sentinel), while the other cells are bidirectional context;
the text is predicted too, from the visible cells (the ``coglm`` kind of
:mod:`vqgen.transformer.masks` states the exact mask). The full stream ``[t_0 .. t_{L-1}, c_0 ..
c_{N-1}]`` runs with one mask per row (the plain rows' mask is causal), so one forward pass
serves both kinds. Such a checkpoint samples autoregressively (``prefill``/``decode_step``, the
causal mask), fills a region given the text and the rest of the image (:meth:`Unified.infill`),
and scores captions (:meth:`Unified.caption_nll`, the text predicted from the whole image).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.errors import VqgenError
from vqgen.config import require
from vqgen.io import PretrainedMixin, register_model
from vqgen.transformer.base import Condition, KVCache, TextModelMixin, TokenModel, TokenOutput
from vqgen.transformer.config import TextConfig, TransformerConfig
from vqgen.transformer.layers import Block, PosEmbed, init_weights, stream_mask
from vqgen.transformer.masks import coglm_mask


@dataclass(frozen=True)
class UnifiedConfig(TransformerConfig):
    """The unified stream: the shared fields plus its text (trained BPE tokens in the stream),
    ``text_loss_weight`` (loss = w * text + (1 - w) * image), ``text_attention_bias`` (CogView2's
    constant on image-to-text scores) and ``image_first`` (image codes then the caption: CogView's
    caption scorer, which cannot sample). CogLM: ``coglm_mix`` (the probability that a training
    sample is a masked-region sample; 0 = plain next-token training), ``coglm_patch`` (side of the
    masked boxes, in codes, clipped to the grid) and ``coglm_patches`` (boxes per sample =
    ``max(1, round(coglm_patches * N / coglm_patch**2))``; they may overlap)."""

    family_name: ClassVar[str] = "unified"
    # fields of the one-config-for-all-families layout that the unified stream never used: dropped from old files
    legacy_keys: ClassVar[tuple[str, ...]] = ("num_classes", "encoder_depth")
    family: str = "unified"
    text: TextConfig = field(default_factory=TextConfig)
    text_loss_weight: float = 0.125
    text_attention_bias: float = 0.0
    image_first: bool = False
    coglm_mix: float = 0.0
    coglm_patch: int = 4  # CogView2's 4x4 patches (of a 20x20 grid)
    coglm_patches: float = 0.8  # CogView2's pseudo mask ratio: 0.8 * 400 / 16 = 20 patches

    def __post_init__(self):
        super().__post_init__()
        require(0.0 <= self.text_loss_weight < 1.0, "text_loss_weight", "must be in [0, 1)")
        require(0.0 <= self.coglm_mix <= 1.0, "coglm_mix", "must be in [0, 1] (0 = plain next-token training)")
        require(not (self.image_first and self.coglm_mix > 0), "coglm_mix",
                "CogLM needs the text first in the stream (image_first=false)")
        require(self.coglm_patch >= 1, "coglm_patch", "must be >= 1")
        require(self.coglm_patches > 0, "coglm_patches", "must be > 0")
        require(self.text.encoder == "trained", "text.encoder",
                "the unified stream models its own text tokens: use text.encoder=trained")


@register_model("unified")
class Unified(TextModelMixin, TokenModel, PretrainedMixin):
    config_class = UnifiedConfig

    def __init__(self, config: UnifiedConfig):
        super().__init__()
        if not isinstance(config, UnifiedConfig):
            raise VqgenError(f"Unified needs a UnifiedConfig (family='unified'), got family {config.family!r}")
        self.config = config
        self.cond_kind = "text"
        c, d = config, config.dim
        self.text_len = c.text.max_len
        self.text_emb = nn.Embedding(c.text.vocab_size, d)
        self.text_pos = nn.Parameter(torch.zeros(c.text.max_len, d))
        self.tok_emb = nn.Embedding(c.codebook_size, d)
        self.pos_emb = PosEmbed(c.grid, d)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(d, c.heads, c.mlp_dim, c.dropout, c.norm) for _ in range(c.depth))
        self.norm = nn.LayerNorm(d)
        self.text_head = nn.Linear(d, c.text.vocab_size, bias=False)
        self.head = nn.Linear(d, c.codebook_size, bias=False)
        init_weights(self, c.depth)
        nn.init.normal_(self.text_pos, 0.0, 0.02)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def _text(self, cond: Condition) -> torch.Tensor:
        ids = cond.text_ids
        if ids.shape[1] != self.text_len:
            raise VqgenError(f"text must have exactly text.max_len={self.text_len} tokens, got {ids.shape[1]}")
        return self.text_emb(ids) + self.text_pos  # (B, L, D)

    def _embed(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        idx = start + torch.arange(codes.shape[1], device=codes.device)  # (n,)
        return self.tok_emb(codes) + self.pos_emb(idx)  # (B, n, D)

    def _mask(self, q_pos: torch.Tensor, k_len: int):
        return stream_mask(q_pos, k_len, self.text_len, self.config.text_attention_bias)

    def _run(self, codes: torch.Tensor, cond: Condition, layers: int) -> torch.Tensor:
        if self.config.image_first:
            x = self.drop(torch.cat([self._embed(codes), self._text(cond)[:, :-1]], 1))  # (B, N + L - 1, D)
            for blk in self.blocks[:layers]:
                x = blk(x, causal=True)
            return x
        x = self.drop(torch.cat([self._text(cond), self._embed(codes)], 1))  # (B, L + n, D)
        bias = self.config.text_attention_bias
        mask = self._mask(torch.arange(x.shape[1], device=x.device), x.shape[1]) if bias else None
        for blk in self.blocks[:layers]:
            x = blk(x, mask=mask, causal=True)
        return x

    def forward(self, codes: torch.Tensor, cond: Condition | None = None) -> TokenOutput:
        codes = self.flat_codes(codes)  # (B, N)
        cond = self.with_text(cond, codes.shape[0], codes.device)
        if self.config.image_first:
            x = self.norm(self._run(codes, cond, self.num_blocks))  # (B, N + L - 1, D)
            n = codes.shape[1]
            return TokenOutput(logits=self.head(x[:, : n - 1]).float(),  # (B, N - 1, V): c_1 .. c_{N-1}
                               text_logits=self.text_head(x[:, n - 1:]).float())  # (B, L, Vt): t_0 .. t_{L-1}
        x = self.norm(self._run(codes[:, :-1], cond, self.num_blocks))  # (B, L + N - 1, D)
        L = self.text_len
        return TokenOutput(logits=self.head(x[:, L - 1:]).float(),  # (B, N, V)
                           text_logits=self.text_head(x[:, : L - 1]).float())  # (B, L - 1, Vt)

    def compute_loss(self, codes: torch.Tensor, cond: Condition | None = None) -> tuple[torch.Tensor, dict]:
        """The loss of the stream; in training mode with ``coglm_mix > 0`` the CogLM mix
        (:meth:`coglm_loss` over random regions), else plain next-token (also in eval mode, so
        validation losses compare with plain runs)."""
        codes = self.flat_codes(codes)
        cond = self.with_text(cond, codes.shape[0], codes.device)
        if self.training and self.config.coglm_mix > 0:
            b = codes.shape[0]
            infill = (torch.rand(b) < self.config.coglm_mix).to(codes.device)  # (B,)
            region = self.patch_regions(b, device=codes.device)  # (B, N)
            return self.coglm_loss(codes, cond, region | ~infill[:, None])  # plain rows: every code masked
        out = self(codes, cond)
        first = 1 if self.config.image_first else 0  # text-first predicts every code, image-first all but c_0
        image_loss = F.cross_entropy(out.logits.flatten(0, 1), codes[:, first:].flatten())
        targets = self._text_targets(cond)  # (B, L - 1) or (B, L)
        if bool((targets >= 0).any()):
            text_loss = F.cross_entropy(out.text_logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        else:  # every row is the null text: nothing to predict
            text_loss = out.text_logits.sum() * 0.0
        w = self.config.text_loss_weight
        loss = w * text_loss + (1 - w) * image_loss
        return loss, {"image_loss": image_loss.detach(), "text_loss": text_loss.detach()}

    # -- CogLM --------------------------------------------------------------------------------
    def patch_regions(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Random CogLM regions (B, N) bool: per row the union of ``coglm_patches``-many boxes of
        side ``coglm_patch`` (clipped to each grid axis) with uniform corners inside the grid."""
        c, grid = self.config, self.grid
        sides = torch.tensor([min(c.coglm_patch, n) for n in grid])  # (A,)
        count = max(1, round(c.coglm_patches * self.image_seq_len / c.coglm_patch ** 2))
        room = torch.tensor(grid) - sides + 1  # (A,) corner positions per axis
        corners = (torch.rand(batch, count, len(grid), generator=generator) * room).long()  # (B, P, A)
        cells = torch.stack(torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij"), -1).flatten(0, -2)  # (N, A)
        inside = (cells >= corners[:, :, None]) & (cells < (corners + sides)[:, :, None])  # (B, P, N, A)
        return inside.all(-1).any(1).to(device)  # (B, N)

    def coglm_logits(self, codes: torch.Tensor, cond: Condition, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the full stream under the ``coglm`` mask with the image cells ``region`` (B, N)
        bool masked and the text predicted: image (B, N, V), row ``i`` predicts code ``i`` (from
        stream position ``L + i - 1``; meaningful where ``region`` is True); text (B, L - 1, Vt)
        for ``t_1 .. t_{L-1}``, predicted from the text before them and the unmasked cells."""
        L, b = self.text_len, codes.shape[0]
        text = torch.ones(b, L, dtype=torch.bool, device=codes.device)  # (B, L)
        text[:, 0] = False  # t_0 has no position before it
        allowed = coglm_mask(torch.cat([text, region.bool()], 1))[:, None]  # (B, 1, L + N, L + N)
        mask = allowed
        if self.config.text_attention_bias:
            pos = torch.arange(allowed.shape[-1], device=codes.device)  # (L + N,)
            bias = ((pos[:, None] >= L) & (pos[None, :] < L)).float() * self.config.text_attention_bias  # (L + N, L + N)
            mask = bias.masked_fill(~allowed, float("-inf"))  # (B, 1, L + N, L + N)
        x = self.drop(torch.cat([self._text(cond), self._embed(codes)], 1))  # (B, L + N, D)
        for blk in self.blocks:
            x = blk(x, mask=mask)
        x = self.norm(x)
        return self.head(x[:, L - 1:-1]).float(), self.text_head(x[:, : L - 1]).float()  # (B, N, V), (B, L - 1, Vt)

    def coglm_loss(self, codes: torch.Tensor, cond: Condition, region: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``w * text + (1 - w) * image`` with the image loss over the masked cells ``region`` (B, N)
        (all of them in a plain row); metrics ``infill_loss`` over the rows with some cell unmasked."""
        codes = self.flat_codes(codes)
        cond = self.with_text(cond, codes.shape[0], codes.device)
        logits, text_logits = self.coglm_logits(codes, cond, region)  # (B, N, V), (B, L - 1, Vt)
        nll = F.cross_entropy(logits.transpose(1, 2), codes, reduction="none")  # (B, N)
        image_loss = (nll * region).sum() / region.sum().clamp(min=1)
        targets = self._text_targets(cond)  # (B, L - 1)
        if bool((targets >= 0).any()):
            text_loss = F.cross_entropy(text_logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        else:
            text_loss = text_logits.sum() * 0.0
        w = self.config.text_loss_weight
        partial = region & ~region.all(1, keepdim=True)  # (B, N): the cells of the masked-region rows
        metrics = {"image_loss": image_loss.detach(), "text_loss": text_loss.detach()}
        if bool(partial.any()):
            metrics["infill_loss"] = ((nll * partial).sum() / partial.sum()).detach()
        return w * text_loss + (1 - w) * image_loss, metrics

    def _needs_coglm(self, what: str) -> None:
        if self.config.coglm_mix <= 0:
            raise VqgenError(f"{what} needs a CogLM-trained unified model (model.coglm_mix > 0)")

    @torch.no_grad()
    def infill(self, codes: torch.Tensor, region: torch.Tensor, cond: Condition | None = None,
               generator: torch.Generator | None = None, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
        """Codes (B, N) or (B, *grid) with the cells ``region`` (same shape, bool) regenerated from
        the text and every other cell; the rest is returned unchanged. The region is written in
        raster order, one code per forward pass (as CogLM was trained: each masked code from the
        unmasked cells and the masked codes before it), so it costs one pass per cell of the union
        of the rows' regions. ``temperature=0`` takes the most likely code; ``top_k > 0`` keeps
        that many codes; draws use ``generator`` (CPU)."""
        self._needs_coglm("infill")
        shape = codes.shape
        codes = self.flat_codes(codes).clone()  # (B, N)
        region = region.reshape(codes.shape).bool().to(codes.device)  # (B, N)
        cond = self.with_text(cond, codes.shape[0], codes.device)
        for i in region.any(0).nonzero().flatten().tolist():
            logits = self.coglm_logits(codes, cond, region)[0][:, i]  # (B, V)
            if temperature == 0:
                tok = logits.argmax(-1)  # (B,)
            else:
                logits = logits / temperature
                if top_k:
                    kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = logits.softmax(-1).cpu()  # (B, V)
                tok = torch.multinomial(probs, 1, generator=generator)[:, 0].to(codes.device)  # (B,)
            codes[:, i] = torch.where(region[:, i], tok, codes[:, i])
        return codes.view(shape)

    def _text_targets(self, cond: Condition) -> torch.Tensor:
        """Text ids the text head predicts, -100 where there is no caption token."""
        if self.config.image_first:
            return cond.text_ids.masked_fill(~cond.text_mask, -100)  # (B, L)
        return cond.text_ids[:, 1:].masked_fill(~cond.text_mask[:, 1:], -100)  # (B, L - 1)

    @torch.no_grad()
    def caption_nll(self, codes: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Mean negative log-likelihood per caption token given the image (B,): lower fits better.

        Needs a text-after-image model (``image_first=True``: ``t_0 .. t_{L-1}`` after the image)
        or a CogLM-trained one (``coglm_mix > 0``: ``t_1 .. t_{L-1}`` under the ``coglm`` mask with
        no cell masked, so each caption token sees the caption before it and the whole image)."""
        if not self.scores_captions:
            raise VqgenError("caption perplexity needs a text-after-image model (image_first=true) "
                             "or a CogLM-trained one (coglm_mix > 0)")
        codes = self.flat_codes(codes)
        cond = self.with_text(cond, codes.shape[0], codes.device)
        if self.config.image_first:
            logits = self(codes, cond).text_logits  # (B, L, Vt)
        else:
            logits = self.coglm_logits(codes, cond, torch.zeros_like(codes, dtype=torch.bool))[1]  # (B, L - 1, Vt)
        targets = self._text_targets(cond)  # (B, L) or (B, L - 1)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")  # (B, L)
        return nll.sum(1) / (targets >= 0).sum(1).clamp(min=1)  # (B,)

    @property
    def scores_captions(self) -> bool:
        """Whether :meth:`caption_nll` works: a text-after-image or a CogLM-trained model."""
        return bool(self.config.image_first or self.config.coglm_mix > 0)

    def _no_sampling(self) -> None:
        if self.config.image_first:
            raise VqgenError("a text-after-image model (image_first=true) scores captions; it cannot sample images")

    def features(self, codes: torch.Tensor, layer: int, cond: Condition | None = None) -> torch.Tensor:
        self._no_sampling()
        if not 1 <= layer <= self.num_blocks:
            raise VqgenError(f"layer must be in 1..{self.num_blocks}, got {layer}")
        codes = self.flat_codes(codes)
        cond = self.with_text(cond, codes.shape[0], codes.device)
        return self._run(codes, cond, layer)[:, self.text_len:]  # (B, N, D)

    # -- sampling -------------------------------------------------------------------------
    @property
    def cache_len(self) -> int:
        return self.text_len + self.image_seq_len  # the text, then the image codes

    def _run_cached(self, x: torch.Tensor, cache: KVCache, every: bool = False) -> torch.Tensor:
        q_pos = cache.pos + torch.arange(x.shape[1], device=x.device)  # (T,)
        mask = self._mask(q_pos, cache.max_len)  # (T, T_max)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mask=mask, kv=(cache.k[i], cache.v[i]), pos=cache.pos)
        cache.pos += x.shape[1]
        if every:
            return self.head(self.norm(x)).float()  # (B, T, V)
        return self.head(self.norm(x[:, -1])).float()  # (B, V)

    def prefill(self, cond: Condition | None, cache: KVCache) -> torch.Tensor:
        self._no_sampling()
        b, device = cache.batch_size, cache.pos.device
        cond = self.with_text(cond, b, device)
        prefix = cond.prefix_codes
        prefix = torch.zeros(b, 0, dtype=torch.long, device=device) if prefix is None else prefix.long()
        x = torch.cat([self._text(cond), self._embed(prefix)], 1)  # (B, L + k, D)
        return self._run_cached(x, cache)

    def decode_step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        x = self.tok_emb(tokens)[:, None] + self.pos_emb(cache.pos - self.text_len)  # (B, 1, D)
        return self._run_cached(x, cache)

    def decode_window(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        idx = cache.pos - self.text_len + torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
        x = self.tok_emb(tokens) + self.pos_emb(idx)  # (B, L, D)
        return self._run_cached(x, cache, every=True)  # (B, L, V)
