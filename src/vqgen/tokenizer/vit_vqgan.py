"""ViT-VQGAN: a Vision Transformer encoder and decoder around a factorized, l2-normalized quantizer.

Encoder: non-overlapping p x p patches → linear → + learned positions → transformer blocks →
LayerNorm → two-layer feed-forward with tanh in the middle → quantizer. Decoder: code vectors →
+ learned positions (after optional condition tokens) → transformer blocks → LayerNorm →
two-layer feed-forward with tanh → per-patch pixel predictions (mean logits and log-scales of
the logit-Laplace loss), regrouped into the image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.config import require
from vqgen.io import register_model
from vqgen.tokenizer.base import CondConfig, CondEmbedding, VQTokenizer
from vqgen.tokenizer.quantizer import QuantizerConfig, VectorQuantizer


@dataclass(frozen=True)
class ViTConfig:
    width: int = 512
    depth: int = 8
    heads: int = 8
    mlp_dim: int = 2048

    def __post_init__(self):
        require(self.width >= 1 and self.depth >= 1, "width", "width and depth must be >= 1")
        require(self.heads >= 1 and self.width % self.heads == 0, "heads", "must divide width")


@dataclass(frozen=True)
class ViTVQGANConfig:
    image_size: int = 256
    patch_size: int = 8
    encoder: ViTConfig = field(default_factory=ViTConfig)
    decoder: ViTConfig = field(default_factory=ViTConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    cond: CondConfig = field(default_factory=CondConfig)

    def __post_init__(self):
        require(self.patch_size >= 1 and self.image_size % self.patch_size == 0, "patch_size",
                f"must divide image_size ({self.image_size})")

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size


class Block(nn.Module):
    """Pre-LayerNorm transformer block: self-attention and a GELU MLP, each residual."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, cfg.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d/heads)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))  # (B, T, D)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Transformer blocks, a final LayerNorm and the tanh feed-forward head to ``out_dim``."""

    def __init__(self, cfg: ViTConfig, out_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Sequential(nn.Linear(cfg.width, cfg.mlp_dim), nn.Tanh(), nn.Linear(cfg.mlp_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))  # (B, T, out_dim)


@register_model("vit_vqgan")
class ViTVQGAN(VQTokenizer):
    """The ViT-VQGAN image tokenizer: images (B, 3, H, W) in [0, 1] ⇄ codes (B, H/p, W/p)."""

    config_class = ViTVQGANConfig

    def __init__(self, config: ViTVQGANConfig):
        super().__init__()
        self.config = config
        p, enc, dec = config.patch_size, config.encoder, config.decoder
        n = (config.image_size // p) ** 2
        self.patch_embed = nn.Linear(3 * p * p, enc.width)
        self.enc_pos = nn.Parameter(torch.randn(1, n, enc.width) * 0.02)
        self.encoder = ViT(enc, enc.width)
        self.quantizer = VectorQuantizer(config.quantizer, enc.width, dec.width)
        self.dec_pos = nn.Parameter(torch.randn(1, n, dec.width) * 0.02)
        self.decoder = ViT(dec, 2 * 3 * p * p)  # mean logits + log-scales per pixel
        self.cond_embed = CondEmbedding(config.cond, dec.width) if config.cond.kind != "none" else None

    @property
    def grid_size(self) -> tuple[int, int]:
        g = self.config.image_size // self.config.patch_size
        return g, g

    def encode_features(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        b, c, hh, ww = x.shape
        patches = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)  # (B, N, 3pp)
        return self.encoder(self.patch_embed(patches) + self.enc_pos)  # (B, N, D_enc)

    def decode_features(self, q: torch.Tensor, cond_tokens: torch.Tensor | None) -> torch.Tensor:
        p = self.config.patch_size
        gh, gw = self.grid_size
        x = q + self.dec_pos  # (B, N, D_dec)
        t = 0
        if cond_tokens is not None:
            t = cond_tokens.shape[1]
            x = torch.cat([cond_tokens.to(x.dtype), x], dim=1)  # (B, T+N, D_dec)
        out = self.decoder(x)[:, t:]  # (B, N, 6pp)
        b = out.shape[0]
        out = out.reshape(b, gh, gw, 6, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, 6, gh, p, gw, p)
        return out.reshape(b, 6, gh * p, gw * p)  # (B, 6, H, W)
