"""Decoder-only Vector-quantized Image Modeling (VIM).

Image codes in raster order, each embedded with a learned 2D position, behind one start token:
a learned unconditional start, or a class token from its own embedding table (index
``num_classes`` is the null class, ``NULL_CLASS`` in a ``Condition``). Causal blocks, a final
LayerNorm, logits over the codebook. Stream: ``[start, c_0, ..., c_{N-2}]`` predicts ``c_0..c_{N-1}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vqgen.errors import VqgenError
from vqgen.config import require
from vqgen.io import PretrainedMixin, register_model
from vqgen.transformer.base import Condition, KVCache, TokenModel, TokenOutput
from vqgen.transformer.config import TransformerConfig
from vqgen.transformer.layers import Block, PosEmbed, init_weights, stream_mask


@dataclass(frozen=True)
class VIMConfig(TransformerConfig):
    """VIM: the shared fields plus ``num_classes`` (0 = unconditional, C = class-conditional)."""

    family_name: ClassVar[str] = "vim"
    # fields of the one-config-for-all-families layout that VIM never used: dropped from old files
    legacy_keys: ClassVar[tuple[str, ...]] = ("encoder_depth", "text", "text_loss_weight", "text_attention_bias",
                                              "image_first")
    family: str = "vim"
    num_classes: int = 0

    def __post_init__(self):
        super().__post_init__()
        require(self.num_classes >= 0, "num_classes", "must be >= 0")

    @property
    def cond_kind(self) -> str:
        return "class" if self.num_classes > 0 else "none"


@register_model("vim")
class VIM(TokenModel, PretrainedMixin):
    config_class = VIMConfig

    def __init__(self, config: VIMConfig):
        super().__init__()
        if not isinstance(config, VIMConfig):
            raise VqgenError(f"VIM needs a VIMConfig (family='vim'), got family {config.family!r}")
        self.config = config
        self.cond_kind = config.cond_kind
        d = config.dim
        self.tok_emb = nn.Embedding(config.codebook_size, d)
        self.start_emb = nn.Embedding(config.num_classes + 1, d)  # classes, then null / unconditional
        self.pos_emb = PosEmbed(config.grid, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(d, config.heads, config.mlp_dim, config.dropout, config.norm)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.codebook_size, bias=False)
        init_weights(self, config.depth)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def _start_ids(self, cond: Condition | None, batch: int, device) -> torch.Tensor:
        c = self.config.num_classes
        ids = None if cond is None else cond.class_ids
        if ids is None:
            return torch.full((batch,), c, dtype=torch.long, device=device)  # (B,)
        if c == 0:
            raise VqgenError("this VIM model is unconditional: it takes no class_ids")
        if ids.numel() and int(ids.max()) >= c:
            raise VqgenError(f"class id {int(ids.max())} out of range (model has {c} classes)")
        return torch.where(ids < 0, c, ids).long().to(device)  # (B,)

    def _embed(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        idx = start + torch.arange(codes.shape[1], device=codes.device)  # (n,)
        return self.tok_emb(codes) + self.pos_emb(idx)  # (B, n, D)

    def _stream(self, codes: torch.Tensor, cond: Condition | None) -> torch.Tensor:
        start = self.start_emb(self._start_ids(cond, codes.shape[0], codes.device))[:, None]  # (B, 1, D)
        return self.drop(torch.cat([start, self._embed(codes)], 1))  # (B, 1 + n, D)

    def forward(self, codes: torch.Tensor, cond: Condition | None = None) -> TokenOutput:
        codes = self.flat_codes(codes)  # (B, N)
        x = self._stream(codes[:, :-1], cond)  # (B, N, D)
        for blk in self.blocks:
            x = blk(x, causal=True)
        return TokenOutput(logits=self.head(self.norm(x)).float())  # (B, N, V)

    def features(self, codes: torch.Tensor, layer: int, cond: Condition | None = None) -> torch.Tensor:
        if not 1 <= layer <= self.num_blocks:
            raise VqgenError(f"layer must be in 1..{self.num_blocks}, got {layer}")
        codes = self.flat_codes(codes)
        x = self._stream(codes, cond)  # (B, N + 1, D)
        for blk in self.blocks[:layer]:
            x = blk(x, causal=True)
        return x[:, 1:]  # (B, N, D): the outputs at the image codes

    # -- sampling -------------------------------------------------------------------------
    def _run_cached(self, x: torch.Tensor, cache: KVCache, every: bool = False) -> torch.Tensor:
        q_pos = cache.pos + torch.arange(x.shape[1], device=x.device)  # (T,)
        mask = stream_mask(q_pos, cache.max_len)  # (T, T_max)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mask=mask, kv=(cache.k[i], cache.v[i]), pos=cache.pos)
        cache.pos += x.shape[1]
        if every:
            return self.head(self.norm(x)).float()  # (B, T, V)
        return self.head(self.norm(x[:, -1])).float()  # (B, V)

    def prefill(self, cond: Condition | None, cache: KVCache) -> torch.Tensor:
        b, device = cache.batch_size, cache.pos.device
        prefix = None if cond is None else cond.prefix_codes
        prefix = torch.zeros(b, 0, dtype=torch.long, device=device) if prefix is None else prefix.to(device)
        start = self.start_emb(self._start_ids(cond, b, device))[:, None]  # (B, 1, D)
        x = torch.cat([start, self._embed(prefix.long())], 1)  # (B, 1 + k, D)
        return self._run_cached(x, cache)

    def decode_step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        x = self.tok_emb(tokens)[:, None] + self.pos_emb(cache.pos - 1)  # (B, 1, D)
        return self._run_cached(x, cache)

    def decode_window(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        idx = cache.pos - 1 + torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
        x = self.tok_emb(tokens) + self.pos_emb(idx)  # (B, L, D)
        return self._run_cached(x, cache, every=True)  # (B, L, V)
