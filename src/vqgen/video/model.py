"""The dual-channel video transformer (CogVideo): an inherited text-to-image unified decoder whose
every layer keeps its spatial attention (within a frame) and gains a temporal attention channel
over the other frames, mixed in through a learnable gate that starts at zero.

A clip is ``F`` frames of codes on the image model's grid ``(h, w)`` (``N`` cells). Its sequence
is CogVideo's ``[text, frame rate, B, frame 0, B, frame 1, ...]``: each frame runs through the
image model as its own stream ``[t_0 .. t_{L-2}, B, c_0 .. c_{N-1}]`` where the separator ``B``
is the image model's last text slot (``[PAD]`` at position ``L - 1``: what it reads right before
its first code; captions are cut to ``L - 1`` tokens so that slot is always padding). In every
block::

    x = x + spatial(x)  +  tanh(gate) * temporal(x)      (the temporal term on frame positions only)
    x = x + mlp(x)

``spatial`` is the image block's own attention (frozen when inheriting) and ``temporal`` attends
from each frame position to the text, the frame-rate token and the cells of other frames in a 3D
local window (:mod:`vqgen.video.masks`). With every gate at zero the model *is* the image model
frame by frame (tested bit for bit). Two temporal channels share the backbone: ``key`` (key
frames, causal over frames) and ``interp`` (frame interpolation, bidirectional over the given
neighbours). Training one task freezes the other channel; inheriting freezes ``image.*`` too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.config import require
from vqgen.errors import VqgenError
from vqgen.io import PretrainedMixin, register_model
from vqgen.text.bpe import PAD_ID
from vqgen.transformer.base import Condition, TextModelMixin, TokenModel
from vqgen.transformer.unified import Unified, UnifiedConfig
from vqgen.video.masks import temporal_mask

TASKS = ("key", "interp")


@dataclass(frozen=True)
class VideoConfig:
    """``image``: the inherited unified decoder's config; ``frames``: frames per sequence (5 key
    frames; an interpolation window is 5 frames too: 3 given, 2 inserted); ``frame_rates``: the
    frame-rate vocabulary (frames per second; one learned token each); ``window``: odd side of the
    temporal channel's spatial window in cells; ``frame_window``: how many earlier frames a key
    frame sees (0 = all)."""

    image: UnifiedConfig = field(default_factory=UnifiedConfig)
    frames: int = 5
    frame_rates: tuple[int, ...] = (2, 4, 8, 16)
    window: int = 5
    frame_window: int = 0

    def __post_init__(self):
        require(self.frames >= 2, "frames", "must be >= 2")
        require(len(self.frame_rates) >= 1 and all(r > 0 for r in self.frame_rates), "frame_rates",
                "must be positive frame rates")
        require(self.window >= 1 and self.window % 2 == 1, "window", "must be an odd number of cells")
        require(self.frame_window >= 0, "frame_window", "must be >= 0 (0 = every earlier frame)")
        require(not self.image.image_first, "image.image_first", "the inherited model must write images (text first)")
        require(len(self.image.grid) == 2, "image.grid", "the inherited model works on one frame: (h, w)")

    @property
    def cond_kind(self) -> str:
        return "text"


class TemporalLayer(nn.Module):
    """One layer's temporal channel: LayerNorm, multi-head attention under a mask, and the gate."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(dim))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of ``x`` (B, T, D): 3 x (B, H, T, Dh)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def out(self, y: torch.Tensor) -> torch.Tensor:
        """Attention output (B, H, Q, Dh) → the gated residual term (B, Q, D)."""
        b, _, q, _ = y.shape
        return torch.tanh(self.gate) * self.proj(y.transpose(1, 2).reshape(b, q, -1))  # (B, Q, D)


class TemporalChannel(nn.Module):
    """A task's temporal parameters: frame positions, the frame-rate tokens, one layer per block."""

    def __init__(self, dim: int, heads: int, depth: int, frames: int, rates: int):
        super().__init__()
        self.frame_pos = nn.Parameter(torch.zeros(frames, dim))
        self.rate_emb = nn.Embedding(rates, dim)
        self.layers = nn.ModuleList(TemporalLayer(dim, heads) for _ in range(depth))
        nn.init.normal_(self.frame_pos, 0.0, 0.02)
        nn.init.normal_(self.rate_emb.weight, 0.0, 0.02)
        for layer in self.layers:
            nn.init.normal_(layer.qkv.weight, 0.0, 0.02)
            nn.init.zeros_(layer.qkv.bias)
            nn.init.normal_(layer.proj.weight, 0.0, 0.02 / math.sqrt(2 * depth))
            nn.init.zeros_(layer.proj.bias)


class VideoCache:
    """Keys and values while writing a clip: per layer the spatial streams ``sk``/``sv`` (B*F, H,
    L + N, Dh), one per frame, and the temporal sequence ``tk``/``tv`` (B, H, T + 1 + F*(N + 1), Dh)."""

    def __init__(self, depth: int, batch: int, frames: int, heads: int, spatial_len: int, temporal_len: int,
                 head_dim: int, device, dtype):
        s_shape, t_shape = (batch * frames, heads, spatial_len, head_dim), (batch, heads, temporal_len, head_dim)
        self.sk = [torch.zeros(s_shape, device=device, dtype=dtype) for _ in range(depth)]
        self.sv = [torch.zeros(s_shape, device=device, dtype=dtype) for _ in range(depth)]
        self.tk = [torch.zeros(t_shape, device=device, dtype=dtype) for _ in range(depth)]
        self.tv = [torch.zeros(t_shape, device=device, dtype=dtype) for _ in range(depth)]
        self.batch, self.frames = batch, frames
        self.mask: torch.Tensor | None = None  # (F*(N+1), K) bool, the task's temporal mask
        self.rate: torch.Tensor | None = None  # (B, 1, D) the frame-rate token


@register_model("video")
class VideoTransformer(TextModelMixin, TokenModel, PretrainedMixin):
    """The inherited image model (``image``) plus the temporal channels ``key`` and ``interp``.

    ``grid`` is one frame's grid (the image tokenizer's); a clip's codes are (B, F, N) or (B, F, h, w).
    """

    config_class = VideoConfig

    def __init__(self, config: VideoConfig):
        super().__init__()
        self.config = config
        self.cond_kind = "text"
        self.image = Unified(config.image)
        c = config.image
        for task in TASKS:
            self.add_module(task, TemporalChannel(c.dim, c.heads, c.depth, config.frames, len(config.frame_rates)))

    # -- facts ---------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.config.image.grid)

    @property
    def codebook_size(self) -> int:
        return self.config.image.codebook_size

    @property
    def num_blocks(self) -> int:
        return len(self.image.blocks)

    @property
    def head(self) -> nn.Linear:
        return self.image.head

    @property
    def text_tokenizer(self):
        return self.image.text_tokenizer

    @text_tokenizer.setter
    def text_tokenizer(self, tok):
        self.image.text_tokenizer = tok

    def rate_index(self, rates) -> torch.Tensor:
        """Frame rates (ints) → indices into ``frame_rates`` (B,) long; an unknown rate is an error."""
        known = list(self.config.frame_rates)
        rates = [int(r) for r in (rates.tolist() if isinstance(rates, torch.Tensor) else rates)]
        bad = [r for r in rates if r not in known]
        if bad:
            raise VqgenError(f"frame rate {bad[0]} is not one this model knows ({', '.join(map(str, known))})")
        return torch.tensor([known.index(r) for r in rates], dtype=torch.long)

    # -- text ----------------------------------------------------------------------------------
    def tokenize(self, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """The image model's tokens cut to ``L - 1``, then the separator slot: (B, L) ids and mask."""
        if self.text_tokenizer is None:
            raise VqgenError("this model has no text tokenizer (tokenizer.json is missing beside its weights)")
        ids, mask = self.text_tokenizer.encode(texts, self.image.text_len - 1)  # (B, L - 1)
        return F.pad(ids, (0, 1), value=PAD_ID), F.pad(mask, (0, 1), value=False)  # (B, L)

    # -- masks ---------------------------------------------------------------------------------
    def temporal_mask(self, task: str, frames: int, known: torch.Tensor | None = None, device=None) -> torch.Tensor:
        if task not in TASKS:
            raise VqgenError(f"task must be one of {TASKS}, got {task!r}")
        return temporal_mask(self.grid, frames, self.image.text_len - 1, self.config.window, mode=task,
                             known=known, frame_window=self.config.frame_window if task == "key" else 0,
                             device=device)

    def _spatial(self, blk, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The image block's causal self-attention over frame streams ``h`` (BF, L+N, D), computed
        as the image model computes its own stream (``L + N - 1`` positions: SDPA's rounding depends
        on the length), plus the last code's row, which only later frames' temporal keys use."""
        b, t, d = h.shape
        q, k, v = _heads(blk.attn.qkv(h), blk.attn.heads)  # 3 x (BF, H, T, Dh)
        p = blk.attn.dropout if self.training else 0.0
        head = F.scaled_dot_product_attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], dropout_p=p,
                                              attn_mask=None if mask is None else mask[:-1, :-1],
                                              is_causal=mask is None)  # (BF, H, T-1, Dh)
        last = F.scaled_dot_product_attention(q[:, :, -1:], k, v, dropout_p=p,
                                              attn_mask=None if mask is None else mask[-1:])  # (BF, H, 1, Dh)
        return blk.attn.proj(torch.cat([head, last], 2).transpose(1, 2).reshape(b, t, d))  # (BF, T, D)

    def _spatial_mask(self, q_pos: torch.Tensor, k_len: int):
        """The image model's own mask (None = plain causal when it has no text-attention constant)."""
        return self.image._mask(q_pos, k_len) if self.config.image.text_attention_bias else None

    # -- training ------------------------------------------------------------------------------
    def clip_logits(self, codes: torch.Tensor, cond: Condition, rate: torch.Tensor, task: str = "key",
                    known: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, F, N, V) of every frame's codes; ``codes`` (B, F, N) or
        (B, F, h, w) long, ``rate`` (B,) indices into ``frame_rates``, ``known`` (F,) bool for ``interp``."""
        img = self.image
        b, f = codes.shape[:2]
        codes = codes.reshape(b, f, -1).long()  # (B, F, N)
        n, L = codes.shape[2], img.text_len
        if n != img.image_seq_len or f > self.config.frames:
            raise VqgenError(f"clip codes must be (B, <={self.config.frames}, {img.image_seq_len}), got {tuple(codes.shape)}")
        cond = img.with_text(cond, b, codes.device)
        channel = getattr(self, task)
        mask = self.temporal_mask(task, f, known, codes.device)  # (F*(N+1), K)
        x = img.drop(torch.cat([img._text(cond).repeat_interleave(f, 0), img._embed(codes.flatten(0, 1))], 1))  # (BF, L+N, D)
        s_mask = self._spatial_mask(torch.arange(x.shape[1], device=x.device), x.shape[1])
        rate_tok = channel.rate_emb(rate.to(codes.device))[:, None]  # (B, 1, D)
        for blk, layer in zip(img.blocks, channel.layers):
            y = x + blk.drop(blk.post1(self._spatial(blk, blk.norm1(x), s_mask)))  # (BF, L+N, D)
            frames = (x[:, L - 1:].unflatten(0, (b, f)) + channel.frame_pos[:f, None]).flatten(1, 2)  # (B, F(N+1), D)
            keys = torch.cat([x[::f, : L - 1], rate_tok, frames], 1)  # (B, L + F(N+1), D)
            q, k, v = layer.project(keys)  # 3 x (B, H, K, Dh)
            t = layer.out(F.scaled_dot_product_attention(q[:, :, L:], k, v, attn_mask=mask))  # (B, F(N+1), D)
            y = torch.cat([y[:, : L - 1], y[:, L - 1:] + t.view(b * f, n + 1, -1)], 1)  # (BF, L+N, D)
            x = y + blk.drop(blk.post2(blk.mlp(blk.norm2(y))))
        return img.head(img.norm(x[:, L - 1: L - 1 + n])).float().view(b, f, n, -1)  # (B, F, N, V)

    def clip_loss(self, codes: torch.Tensor, cond: Condition, rate: torch.Tensor, task: str = "key",
                  known: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over the predicted frames' codes (all for ``key``, the unknown ones
        for ``interp``); returns (loss, {"image_loss": ...})."""
        b, f = codes.shape[:2]
        codes = codes.reshape(b, f, -1).long()  # (B, F, N)
        logits = self.clip_logits(codes, cond, rate, task, known)  # (B, F, N, V)
        pick = torch.ones(f, dtype=torch.bool) if known is None else ~known.bool().cpu()  # (F,)
        pick = pick.to(codes.device)
        loss = F.cross_entropy(logits[:, pick].flatten(0, 2), codes[:, pick].flatten())
        return loss, {"image_loss": loss.detach()}

    # -- sampling ------------------------------------------------------------------------------
    def new_video_cache(self, batch: int, frames: int, task: str, known: torch.Tensor | None = None,
                        device=None) -> VideoCache:
        c = self.config.image
        device = device or self.head.weight.device
        n, L = self.image.image_seq_len, self.image.text_len
        cache = VideoCache(c.depth, batch, frames, c.heads, L + n, L + frames * (n + 1), c.dim // c.heads, device,
                           self.head.weight.dtype)
        cache.mask = self.temporal_mask(task, frames, known, device)
        return cache

    def prefill_video(self, cond: Condition, rate: torch.Tensor, cache: VideoCache, task: str) -> None:
        """Write the text (every frame's spatial stream shares it) and the frame-rate token."""
        img, f = self.image, cache.frames
        channel = getattr(self, task)
        L = img.text_len
        x = img._text(img.with_text(cond, cache.batch, self.head.weight.device))[:, : L - 1]  # (B, L-1, D)
        cache.rate = channel.rate_emb(rate.to(x.device))[:, None]  # (B, 1, D)
        pos = torch.arange(L - 1, device=x.device)  # (L-1,)
        mask = self._spatial_mask(pos, L - 1)
        for i, (blk, layer) in enumerate(zip(img.blocks, channel.layers)):
            _, k, v = layer.project(torch.cat([x, cache.rate], 1))  # (B, H, L, Dh)
            cache.tk[i][:, :, :L], cache.tv[i][:, :, :L] = k, v
            q, k, v = _heads(blk.attn.qkv(blk.norm1(x)), blk.attn.heads)  # 3 x (B, H, L-1, Dh)
            cache.sk[i][:, :, : L - 1] = k.repeat_interleave(f, 0)
            cache.sv[i][:, :, : L - 1] = v.repeat_interleave(f, 0)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)  # (B, H, L-1, Dh)
            x = x + blk.post1(blk.attn.proj(y.transpose(1, 2).flatten(2)))
            x = x + blk.post2(blk.mlp(blk.norm2(x)))

    def slot_inputs(self, codes: torch.Tensor, p0: int, p1: int) -> torch.Tensor:
        """Embeddings of frame slots ``p0 .. p1-1`` (B, nf, p1-p0, D): slot 0 the separator, slot
        ``p`` the code of cell ``p - 1``, from ``codes`` (B, nf, N) (cells not yet written are unused)."""
        img = self.image
        b, nf, _ = codes.shape
        L = img.text_len
        parts = []
        if p0 == 0:
            sep = img.text_emb.weight[PAD_ID] + img.text_pos[L - 1]  # (D,)
            parts.append(sep.expand(b, nf, 1, -1))
        lo = max(p0, 1)
        if p1 > lo:
            cells = torch.arange(lo - 1, p1 - 1, device=codes.device)  # (n,)
            parts.append(img.tok_emb(codes[:, :, lo - 1: p1 - 1]) + img.pos_emb(cells))  # (B, nf, n, D)
        return torch.cat(parts, 2)  # (B, nf, p1-p0, D)

    def run_slots(self, x: torch.Tensor, frames: list[int], p0: int, cache: VideoCache, task: str) -> torch.Tensor:
        """Run slots ``p0 .. p0+P-1`` of ``frames`` (inputs ``x`` (B, nf, P, D)) through every
        block, writing their keys and values; logits (B, nf, P, V) of the next cells."""
        img = self.image
        channel = getattr(self, task)
        b, nf, p, d = x.shape
        n, L, nfr = img.image_seq_len, img.text_len, cache.frames
        fidx = torch.tensor(frames, device=x.device)  # (nf,)
        start = L - 1 + p0  # spatial stream position of slot p0
        q_pos = start + torch.arange(p, device=x.device)  # (P,)
        s_mask = self._spatial_mask(q_pos, start + p)
        if s_mask is None:
            s_mask = torch.arange(start + p, device=x.device)[None, :] <= q_pos[:, None]  # (P, start+P)
        slots = (fidx[:, None] * (n + 1) + p0 + torch.arange(p, device=x.device)).flatten()  # (nf*P,)
        t_mask = cache.mask[slots]  # (nf*P, K)
        x = x.flatten(0, 1)  # (B*nf, P, D)
        for i, (blk, layer) in enumerate(zip(img.blocks, channel.layers)):
            q, k, v = _heads(blk.attn.qkv(blk.norm1(x)), blk.attn.heads)  # 3 x (B*nf, H, P, Dh)
            sk = cache.sk[i].view(b, nfr, *cache.sk[i].shape[1:])  # (B, F, H, S, Dh)
            sv = cache.sv[i].view(b, nfr, *cache.sv[i].shape[1:])
            sk[:, fidx, :, start:start + p] = k.view(b, nf, *k.shape[1:])
            sv[:, fidx, :, start:start + p] = v.view(b, nf, *v.shape[1:])
            ks, vs = sk[:, fidx, :, : start + p].flatten(0, 1), sv[:, fidx, :, : start + p].flatten(0, 1)
            y = F.scaled_dot_product_attention(q, ks, vs, attn_mask=s_mask)  # (B*nf, H, P, Dh)
            s = blk.post1(blk.attn.proj(y.transpose(1, 2).flatten(2)))  # (B*nf, P, D)
            tin = (x.view(b, nf, p, d) + channel.frame_pos[fidx][None, :, None]).flatten(1, 2)  # (B, nf*P, D)
            tq, tk, tv = layer.project(tin)  # 3 x (B, H, nf*P, Dh)
            cache.tk[i][:, :, L + slots] = tk
            cache.tv[i][:, :, L + slots] = tv
            t = layer.out(F.scaled_dot_product_attention(tq, cache.tk[i], cache.tv[i], attn_mask=t_mask))  # (B, nf*P, D)
            x = x + s + t.view(b * nf, p, d)
            x = x + blk.post2(blk.mlp(blk.norm2(x)))
        return img.head(img.norm(x)).float().view(b, nf, p, -1)  # (B, nf, P, V)

    # -- save / load ---------------------------------------------------------------------------
    @classmethod
    def inherit(cls, image: Unified, **fields) -> "VideoTransformer":
        """A video model around a copy of ``image``'s weights (and text tokenizer); its temporal
        channels start from the image blocks' attention weights, gates at zero."""
        model = cls(VideoConfig(image=image.config, **fields))
        model.image.load_state_dict(image.state_dict())
        model.text_tokenizer = image.text_tokenizer
        with torch.no_grad():
            for task in TASKS:
                for blk, layer in zip(model.image.blocks, getattr(model, task).layers):
                    layer.norm.load_state_dict(blk.norm1.state_dict())
                    layer.qkv.load_state_dict(blk.attn.qkv.state_dict())
                    layer.proj.load_state_dict(blk.attn.proj.state_dict())
        return model


def _heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, 3D) → q, k, v (B, H, T, Dh)."""
    b, t, d3 = qkv.shape
    q, k, v = qkv.view(b, t, 3, heads, d3 // (3 * heads)).permute(2, 0, 3, 1, 4)
    return q, k, v
