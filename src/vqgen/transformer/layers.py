"""Primitives shared by the token transformer families: attention with a static KV cache,
cross-attention, MLP, pre-norm / Sandwich-LayerNorm blocks, masks, grid positions, weight init."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def stream_mask(q_pos: torch.Tensor, k_len: int, text_len: int = 0, text_bias: float = 0.0) -> torch.Tensor:
    """Causal attention mask for queries at stream positions ``q_pos`` (T,) over ``k_len`` keys.

    Returns bool (T, k_len) (True = may attend) or, with a ``text_bias``, a float additive mask
    where scores from image queries (position >= ``text_len``) to text keys get ``+text_bias``
    (CogView2's textual-attention constant) and forbidden keys get -inf. With positions per row,
    ``q_pos`` (B, T) (a cache whose rows are at different positions), the mask is (B, 1, T, k_len).
    """
    k_pos = torch.arange(k_len, device=q_pos.device)  # (Tk,)
    allowed = k_pos <= q_pos[..., None]  # (T, Tk) or (B, T, Tk)
    if text_bias == 0.0:
        mask = allowed
    else:
        bias = ((q_pos[..., None] >= text_len) & (k_pos < text_len)).float() * text_bias  # (T, Tk) or (B, T, Tk)
        mask = bias.masked_fill(~allowed, float("-inf"))
    return mask if q_pos.dim() == 1 else mask[:, None]  # (T, Tk) or (B, 1, T, Tk)


class SelfAttention(nn.Module):
    """Multi-head self-attention (SDPA). With ``kv=(k_buf, v_buf)`` the new keys/values are written
    into the cache buffers (B, H, T_max, Dh) at ``pos`` and attention runs over the buffer (on CPU
    eager, over its written part only); ``pos`` is 0-d (every row at the same position) or (B, 1)
    (each row at its own)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None, pos: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
        if kv is not None:
            k_buf, v_buf = kv
            idx = pos + torch.arange(t, device=x.device)  # (T,) or (B, T)
            if idx.dim() == 1:
                k_buf.index_copy_(2, idx, k.to(k_buf.dtype))
                v_buf.index_copy_(2, idx, v.to(v_buf.dtype))
            else:
                at = idx[:, None, :, None].expand(-1, self.heads, -1, k.shape[-1])  # (B, H, T, Dh)
                k_buf.scatter_(2, at, k.to(k_buf.dtype))
                v_buf.scatter_(2, at, v.to(v_buf.dtype))
            end = k_buf.shape[2]
            if not k_buf.is_cuda and not torch.compiler.is_compiling():
                # Keys after the furthest query are masked out anyway. On CPU, reading the whole
                # static cache is most of a decode step's attention time (bench/sampling.py), so
                # attend over its written part; on GPU (CUDA graphs) and compiled, shapes stay static.
                end = int(idx.max()) + 1
                mask = None if mask is None else mask[..., :end]
            k, v = k_buf[:, :, :end].to(q.dtype), v_buf[:, :, :end].to(q.dtype)  # (B, H, T', Dh)
            causal = False
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                           is_causal=causal and mask is None)  # (B, H, T, Dh)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class CrossAttention(nn.Module):
    """Attention from a token stream to a fixed memory (the encoded text)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``memory`` (B, M, D): 2 x (B, H, M, Dh); computed once per prompt."""
        b, m, d = memory.shape
        k, v = self.kv(memory).view(b, m, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, Dh)
        mask = memory_mask[:, None, None, :]  # (B, 1, 1, M)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))  # (B, T, D)


class Block(nn.Module):
    """A transformer block: self-attention, optional cross-attention, MLP; each residual branch is
    ``x + drop(post(f(pre(x))))`` where ``post`` is a LayerNorm for ``norm="sandwich"`` (CogView)
    and the identity for ``norm="prenorm"``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, norm: str = "prenorm",
                 cross: bool = False):
        super().__init__()
        post = (lambda: nn.LayerNorm(dim)) if norm == "sandwich" else nn.Identity
        self.norm1, self.attn, self.post1 = nn.LayerNorm(dim), SelfAttention(dim, heads, dropout), post()
        self.cross = CrossAttention(dim, heads, dropout) if cross else None
        if cross:
            self.norm_c, self.post_c = nn.LayerNorm(dim), post()
        self.norm2, self.mlp, self.post2 = nn.LayerNorm(dim), MLP(dim, mlp_dim, dropout), post()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                kv=None, pos: torch.Tensor | None = None,
                memory: torch.Tensor | None = None, cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``memory`` (B, M, D) or its cached keys/values ``cross_kv`` feed cross-attention."""
        x = x + self.drop(self.post1(self.attn(self.norm1(x), mask=mask, causal=causal, kv=kv, pos=pos)))
        if self.cross is not None:
            k, v = cross_kv if cross_kv is not None else self.cross.memory_kv(memory)
            x = x + self.drop(self.post_c(self.cross(self.norm_c(x), k, v, memory_mask)))
        return x + self.drop(self.post2(self.mlp(self.norm2(x))))  # (B, T, D)


class PosEmbed(nn.Module):
    """Learned additive position embedding over a code grid ``(h, w)`` or ``(t, h, w)``: one table
    per axis (``row``, ``col``, and ``frame`` for time), summed at the raster index's coordinates
    (the last axis fastest): ``row[i // w] + col[i % w]`` on a 2-D grid."""

    AXES = ("frame", "row", "col")

    def __init__(self, grid: tuple[int, ...], dim: int):
        super().__init__()
        if len(grid) not in (2, 3):
            raise ValueError(f"a code grid has 2 or 3 axes, got {tuple(grid)}")
        self.grid = tuple(int(n) for n in grid)
        self.axes = self.AXES[-len(self.grid):]
        for name, n in zip(self.axes, self.grid):
            self.register_parameter(name, nn.Parameter(torch.zeros(n, dim)))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: raster indices (...,) long → (..., D)."""
        out, rest = None, idx
        for name, n in zip(reversed(self.axes), reversed(self.grid)):
            table = getattr(self, name)  # (n, D)
            i = rest % n if name != self.axes[0] else rest  # (...,); the slowest axis unwrapped
            term = table.index_select(0, i.reshape(-1)).view(*i.shape, table.shape[1])  # (..., D): no host read
            out = term if out is None else term + out
            rest = rest // n
        return out


def init_weights(module: nn.Module, depth: int, std: float = 0.02) -> None:
    """GPT-2-style init that trains stably at depth: N(0, std) weights and embeddings, zero
    biases, and residual output projections scaled by 1/sqrt(2 * depth)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            s = std / math.sqrt(2 * depth) if name.endswith(("attn.proj", "cross.proj", "mlp.fc2")) else std
            nn.init.normal_(m.weight, 0.0, s)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PosEmbed):
            for axis in m.axes:
                nn.init.normal_(getattr(m, axis), 0.0, std)
