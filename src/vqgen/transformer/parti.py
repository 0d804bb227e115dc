"""Encoder-decoder text-to-image (Parti): a text encoder over text tokens and a decoder over image
codes that cross-attends to the encoded text.

The text encoder is either trained with the model (BPE tokens, learned positions, bidirectional
blocks, final LayerNorm) or a frozen pretrained Hugging Face encoder loaded from a local directory,
whose hidden states are projected to the model width, optionally through ``adapter_depth`` trained
blocks. The memory always starts with one learned slot, so the null text (mask all False,
classifier-free guidance) still has something to attend to.
Decoder stream: ``[bos, c_0, ..., c_{N-2}]`` predicts ``c_0..c_{N-1}``.

Imagen's text conditioning, each part off by default (old configs build the old model):

* ``text_norm``: a LayerNorm on the frozen encoder's hidden states before the projection, and on
  the pooled text vector before its projection (Imagen's layer norm on the text embeddings);
* ``text_pool``: the masked mean of the text memory, projected, added to every decoder input
  (the start slot and each image code), as Imagen adds the pooled embedding to the timestep
  embedding, beside the cross-attention over the whole sequence; the null text pools to zeros;
* ``adapter_depth``: trained bidirectional blocks over the projected frozen states (the frozen
  encoder itself never changes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from vqgen.errors import VqgenError
from vqgen.config import require
from vqgen.io import PretrainedMixin, register_model
from vqgen.transformer.base import Condition, KVCache, TextModelMixin, TokenModel, TokenOutput
from vqgen.transformer.config import TextConfig, TransformerConfig
from vqgen.transformer.layers import Block, PosEmbed, init_weights, stream_mask


@dataclass(frozen=True)
class PartiConfig(TransformerConfig):
    """Parti: the shared fields plus the text (``text``), its trained encoder's depth
    (``encoder_depth``; unused with a frozen pretrained encoder) and the text-conditioning options
    of the module docstring (``text_norm``, ``text_pool``, ``adapter_depth``)."""

    family_name: ClassVar[str] = "parti"
    # fields of the one-config-for-all-families layout that Parti never used: dropped from old files
    legacy_keys: ClassVar[tuple[str, ...]] = ("num_classes", "text_loss_weight", "text_attention_bias", "image_first")
    # fields added after models were shipped: their defaults rebuild those models exactly
    quiet_defaults: ClassVar[tuple[str, ...]] = ("text_norm", "text_pool", "adapter_depth")
    family: str = "parti"
    encoder_depth: int = 2
    text: TextConfig = field(default_factory=TextConfig)
    text_norm: bool = False
    text_pool: bool = False
    adapter_depth: int = 0

    def __post_init__(self):
        super().__post_init__()
        require(self.encoder_depth >= 1, "encoder_depth", "must be >= 1")
        require(self.adapter_depth >= 0, "adapter_depth", "must be >= 0")
        require(self.adapter_depth == 0 or self.text.encoder == "pretrained", "adapter_depth",
                "adapts a frozen encoder: needs text.encoder=pretrained (the trained one has encoder_depth)")


@register_model("parti")
class Parti(TextModelMixin, TokenModel, PretrainedMixin):
    config_class = PartiConfig
    # parameters of the text side: the trained encoder or the frozen encoder's projection, adapter and
    # pooling (``train.init_text=false`` starts them fresh; the image decoder is the rest)
    TEXT_SIDE = ("text_", "encoder.", "enc_norm.", "pool_", "adapter.")

    def __init__(self, config: PartiConfig):
        super().__init__()
        if not isinstance(config, PartiConfig):
            raise VqgenError(f"Parti needs a PartiConfig (family='parti'), got family {config.family!r}")
        self.config = config
        self.cond_kind = "text"
        c, d = config, config.dim
        if c.text.encoder == "trained":
            self.text_emb = nn.Embedding(c.text.vocab_size, d)
            self.text_pos = nn.Parameter(torch.zeros(c.text.max_len, d))
            self.encoder = nn.ModuleList(Block(d, c.heads, c.mlp_dim, c.dropout, c.norm) for _ in range(c.encoder_depth))
        else:
            from vqgen.text.encoder import pretrained_hidden_size

            hidden = pretrained_hidden_size(c.text.pretrained_dir)
            if c.text_norm:
                self.text_in_norm = nn.LayerNorm(hidden)
            self.text_proj = nn.Linear(hidden, d)
            if c.adapter_depth:
                self.adapter = nn.ModuleList(Block(d, c.heads, c.mlp_dim, c.dropout, c.norm)
                                             for _ in range(c.adapter_depth))
        self.enc_norm = nn.LayerNorm(d)
        if c.text_pool:
            self.pool_norm = nn.LayerNorm(d) if c.text_norm else nn.Identity()
            self.pool_proj = nn.Linear(d, d)
        self.null_slot = nn.Parameter(torch.zeros(1, 1, d))
        self.bos = nn.Parameter(torch.zeros(1, 1, d))
        self.tok_emb = nn.Embedding(c.codebook_size, d)
        self.pos_emb = PosEmbed(c.grid, d)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(d, c.heads, c.mlp_dim, c.dropout, c.norm, cross=True) for _ in range(c.depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, c.codebook_size, bias=False)
        init_weights(self, c.depth)
        for p in (self.null_slot, self.bos) + ((self.text_pos,) if c.text.encoder == "trained" else ()):
            nn.init.normal_(p, 0.0, 0.02)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def encode_text(self, cond: Condition) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Memory (B, 1 + L, D) and its mask (B, 1 + L) bool: the null slot, then the text; and
        the pooled text vector (B, D) that every decoder input gets (None without ``text_pool``)."""
        if cond is None or cond.text_ids is None:
            raise VqgenError("this Parti model needs text: Condition(text_ids=..., text_mask=...)")
        ids, mask = cond.text_ids, cond.text_mask  # (B, L)
        attend = mask.clone()
        attend[:, 0] = True  # a null row attends to its first slot; its output is masked below
        key_mask = attend[:, None, None, :]  # (B, 1, 1, L)
        if self.config.text.encoder == "trained":
            if ids.shape[1] > self.config.text.max_len:
                raise VqgenError(f"text has {ids.shape[1]} tokens, more than text.max_len={self.config.text.max_len}")
            x = self.drop(self.text_emb(ids) + self.text_pos[: ids.shape[1]])  # (B, L, D)
            for blk in self.encoder:
                x = blk(x, mask=key_mask)
        else:
            h = self.frozen_encoder(ids, mask)  # (B, L, H), no gradient
            x = self.text_proj(self.text_in_norm(h) if self.config.text_norm else h)  # (B, L, D)
            for blk in getattr(self, "adapter", ()):
                x = blk(x, mask=key_mask)
        x = self.enc_norm(x)
        pooled = None
        if self.config.text_pool:
            m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
            mean = (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D); zeros for the null text
            pooled = self.pool_proj(self.pool_norm(mean))  # (B, D)
        b = ids.shape[0]
        memory = torch.cat([self.null_slot.expand(b, -1, -1).to(x.dtype), x], 1)  # (B, 1 + L, D)
        mem_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask], 1)  # (B, 1 + L)
        return memory, mem_mask, pooled

    @staticmethod
    def _with_pooled(x: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        """Decoder inputs (B, T, D) plus the pooled text vector (B, D) at every position."""
        return x if pooled is None else x + pooled[:, None].to(x.dtype)  # (B, T, D)

    def _embed(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        idx = start + torch.arange(codes.shape[1], device=codes.device)  # (n,)
        return self.tok_emb(codes) + self.pos_emb(idx)  # (B, n, D)

    def _decode(self, codes: torch.Tensor, cond: Condition, layers: int) -> torch.Tensor:
        memory, mem_mask, pooled = self.encode_text(cond)
        bos = self.bos.expand(codes.shape[0], -1, -1)  # (B, 1, D)
        x = self.drop(self._with_pooled(torch.cat([bos, self._embed(codes)], 1), pooled))  # (B, 1 + n, D)
        for blk in self.blocks[:layers]:
            x = blk(x, causal=True, memory=memory, memory_mask=mem_mask)
        return x

    def forward(self, codes: torch.Tensor, cond: Condition | None = None) -> TokenOutput:
        codes = self.flat_codes(codes)  # (B, N)
        cond = self.with_text(cond, codes.shape[0], codes.device)
        x = self._decode(codes[:, :-1], cond, self.num_blocks)  # (B, N, D)
        return TokenOutput(logits=self.head(self.norm(x)).float())  # (B, N, V)

    def features(self, codes: torch.Tensor, layer: int, cond: Condition | None = None) -> torch.Tensor:
        if not 1 <= layer <= self.num_blocks:
            raise VqgenError(f"layer must be in 1..{self.num_blocks}, got {layer}")
        codes = self.flat_codes(codes)
        cond = self.with_text(cond, codes.shape[0], codes.device)
        return self._decode(codes, cond, layer)[:, 1:]  # (B, N, D)

    # -- sampling -------------------------------------------------------------------------
    def _run_cached(self, x: torch.Tensor, cache: KVCache, every: bool = False) -> torch.Tensor:
        q_pos = cache.pos + torch.arange(x.shape[1], device=x.device)  # (T,)
        mask = stream_mask(q_pos, cache.max_len)  # (T, T_max)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mask=mask, kv=(cache.k[i], cache.v[i]), pos=cache.pos,
                    cross_kv=cache.cross[i], memory_mask=cache.cross_mask)
        cache.pos += x.shape[1]
        if every:
            return self.head(self.norm(x)).float()  # (B, T, V)
        return self.head(self.norm(x[:, -1])).float()  # (B, V)

    def prefill(self, cond: Condition | None, cache: KVCache) -> torch.Tensor:
        b, device = cache.batch_size, cache.pos.device
        cond = self.with_text(cond, b, device)
        memory, cache.cross_mask, cache.pooled = self.encode_text(cond)
        cache.cross = [tuple(t.to(cache.k[0].dtype) for t in blk.cross.memory_kv(memory)) for blk in self.blocks]
        prefix = cond.prefix_codes
        prefix = torch.zeros(b, 0, dtype=torch.long, device=device) if prefix is None else prefix.long()
        x = torch.cat([self.bos.expand(b, -1, -1), self._embed(prefix)], 1)  # (B, 1 + k, D)
        return self._run_cached(self._with_pooled(x, cache.pooled), cache)

    def decode_step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        x = self.tok_emb(tokens)[:, None] + self.pos_emb(cache.pos - 1)  # (B, 1, D)
        return self._run_cached(self._with_pooled(x, cache.pooled), cache)

    def decode_window(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        idx = cache.pos - 1 + torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
        x = self.tok_emb(tokens) + self.pos_emb(idx)  # (B, L, D)
        return self._run_cached(self._with_pooled(x, cache.pooled), cache, every=True)  # (B, L, V)
