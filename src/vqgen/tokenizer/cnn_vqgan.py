"""CNN-VQGAN baseline: a VQGAN-style convolutional encoder and decoder with the same quantizer,
losses and interface as ViT-VQGAN, so the two compare on the same data, budget and metrics.

Encoder: conv → per level ``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 convs), a
stride-2 conv between levels → a middle block with one self-attention layer → GroupNorm, SiLU,
1x1 conv to ``width`` → quantizer. The decoder mirrors it with nearest-neighbour upsampling; a
condition (class or text) is added to every residual block as a per-channel bias.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.config import require
from vqgen.io import register_model
from vqgen.tokenizer.base import CondConfig, CondEmbedding, VQTokenizer
from vqgen.tokenizer.quantizer import QuantizerConfig, VectorQuantizer


@dataclass(frozen=True)
class CNNVQGANConfig:
    image_size: int = 256
    channels: int = 128  # at full resolution
    channel_mult: tuple[int, ...] = (1, 1, 2, 2)  # one level per entry; downsampling 2^(levels-1)
    num_res_blocks: int = 2
    width: int = 256  # latent channels before the quantizer
    mid_attention: bool = True
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    cond: CondConfig = field(default_factory=CondConfig)

    def __post_init__(self):
        require(len(self.channel_mult) >= 1, "channel_mult", "needs at least one level")
        require(self.image_size % self.downsample == 0, "channel_mult",
                f"downsampling {self.downsample} must divide image_size {self.image_size}")
        require(self.num_res_blocks >= 1 and self.channels >= 1 and self.width >= 1, "num_res_blocks",
                "num_res_blocks, channels and width must be >= 1")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, c), c)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_width: int | None = None):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.cond = nn.Linear(cond_width, c_out) if cond_width else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))  # (B, Cout, H, W)
        if self.cond is not None and cond is not None:
            h = h + self.cond(cond)[:, :, None, None].to(h.dtype)  # after the norm, so it is not removed
        return self.skip(x) + self.conv2(F.silu(h))


class AttnBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # (B, HW, C) each
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, HW, C)
        return x + self.proj(a.transpose(1, 2).reshape(b, c, h, w))


class Encoder(nn.Module):
    def __init__(self, cfg: CNNVQGANConfig):
        super().__init__()
        chans = [cfg.channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(3, chans[0], 3, padding=1)
        self.levels = nn.ModuleList()
        c = chans[0]
        for i, c_out in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, c_out))
                c = c_out
            down = nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(chans) - 1 else nn.Identity()
            self.levels.append(nn.ModuleDict({"blocks": blocks, "down": down}))
        self.mid1, self.mid2 = ResBlock(c, c), ResBlock(c, c)
        self.attn = AttnBlock(c) if cfg.mid_attention else nn.Identity()
        self.norm_out, self.conv_out = _norm(c), nn.Conv2d(c, cfg.width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, C0, H, W)
        for level in self.levels:
            for block in level["blocks"]:
                h = block(h)
            h = level["down"](h)
        h = self.mid2(self.attn(self.mid1(h)))  # (B, C, h, w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, width, h, w)


class Decoder(nn.Module):
    def __init__(self, cfg: CNNVQGANConfig, cond_width: int | None):
        super().__init__()
        chans = [cfg.channels * m for m in cfg.channel_mult][::-1]
        c = chans[0]
        self.conv_in = nn.Conv2d(cfg.width, c, 3, padding=1)
        self.mid1, self.mid2 = ResBlock(c, c, cond_width), ResBlock(c, c, cond_width)
        self.attn = AttnBlock(c) if cfg.mid_attention else nn.Identity()
        self.levels = nn.ModuleList()
        for i, c_out in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, c_out, cond_width))
                c = c_out
            up = nn.Conv2d(c, c, 3, padding=1) if i < len(chans) - 1 else nn.Identity()
            self.levels.append(nn.ModuleDict({"blocks": blocks, "up": up}))
        self.norm_out, self.conv_out = _norm(c), nn.Conv2d(c, 6, 3, padding=1)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.conv_in(z)  # (B, C, h, w)
        h = self.mid2(self.attn(self.mid1(h, cond)), cond)
        for i, level in enumerate(self.levels):
            for block in level["blocks"]:
                h = block(h, cond)
            if i < len(self.levels) - 1:
                h = level["up"](F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B, C, 2h, 2w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 6, H, W)


@register_model("cnn_vqgan")
class CNNVQGAN(VQTokenizer):
    """The CNN-VQGAN tokenizer: images (B, 3, H, W) in [0, 1] ⇄ codes (B, H/f, W/f)."""

    config_class = CNNVQGANConfig

    def __init__(self, config: CNNVQGANConfig):
        super().__init__()
        self.config = config
        has_cond = config.cond.kind != "none"
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(config.quantizer, config.width)
        self.cond_embed = CondEmbedding(config.cond, config.width) if has_cond else None
        self.decoder = Decoder(config, config.width if has_cond else None)

    @property
    def grid_size(self) -> tuple[int, int]:
        g = self.config.image_size // self.config.downsample
        return g, g

    def encode_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)  # (B, width, h, w)
        return h.flatten(2).transpose(1, 2)  # (B, h*w, width)

    def decode_features(self, q: torch.Tensor, cond_tokens: torch.Tensor | None) -> torch.Tensor:
        gh, gw = self.grid_size
        z = q.transpose(1, 2).reshape(q.shape[0], -1, gh, gw)  # (B, width, h, w)
        cond = cond_tokens.mean(dim=1) if cond_tokens is not None else None  # (B, width)
        return self.decoder(z, cond)
