"""The seed's super-resolution module: stacked convolutional residual layers on top of the frozen
tokenizer, mapping its reconstructions to a higher resolution (x2 or x4).

The network works at the input resolution (a stem conv, ``num_blocks`` residual blocks, a conv),
upsamples with pixel shuffle (one x2 step per factor of 2), and predicts a correction that is
added to the bicubic upsampling of the input. The last conv starts at zero, so an untrained
module is exactly bicubic upsampling.

    sr = SuperResolution(SuperResConfig(scale=2))
    high = sr(low)          # (B, 3, H, W) in [0, 1] → (B, 3, 2H, 2W) in [0, 1]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.config import register_preset, require
from vqgen.errors import VqgenError
from vqgen.io import PretrainedMixin, register_model

FAMILY = "superres"


@dataclass(frozen=True)
class SuperResConfig:
    scale: int = 2  # 2 or 4
    channels: int = 64
    num_blocks: int = 8  # residual blocks at the input resolution
    res_scale: float = 1.0  # residual branch multiplier (EDSR uses 0.1 for deep stacks)

    def __post_init__(self):
        require(self.scale in (2, 4), "scale", "must be 2 or 4")
        require(self.channels >= 1, "channels", "must be >= 1")
        require(self.num_blocks >= 0, "num_blocks", "must be >= 0")
        require(self.res_scale > 0, "res_scale", "must be > 0")


@register_preset(FAMILY, "tiny")
def _tiny() -> SuperResConfig:
    """8 channels, 1 block: for tests."""
    return SuperResConfig(channels=8, num_blocks=1)


@register_preset(FAMILY, "small")
def _small() -> SuperResConfig:
    """32 channels, 4 blocks (~80k parameters): trains on a CPU in minutes."""
    return SuperResConfig(channels=32, num_blocks=4)


@register_preset(FAMILY, "base")
def _base() -> SuperResConfig:
    """64 channels, 8 blocks (~0.6M parameters)."""
    return SuperResConfig(channels=64, num_blocks=8)


class ResBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))  # (B, C, H, W)


@register_model("superres")
class SuperResolution(nn.Module, PretrainedMixin):
    """Images (B, 3, H, W) in [0, 1] → (B, 3, H*s, W*s) in [0, 1]."""

    config_class = SuperResConfig

    def __init__(self, config: SuperResConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(*(ResBlock(c, config.res_scale) for _ in range(config.num_blocks)))
        self.body_out = nn.Conv2d(c, c, 3, padding=1)
        up = []
        for _ in range(int(math.log2(config.scale))):
            up += [nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.ReLU()]
        self.upsample = nn.Sequential(*up)
        self.head = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def scale(self) -> int:
        return self.config.scale

    def bicubic(self, images: torch.Tensor) -> torch.Tensor:
        """The baseline the module corrects: bicubic upsampling, clamped to [0, 1]."""
        return F.interpolate(images, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise VqgenError(f"expected images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        x = images.float() * 2.0 - 1.0  # (B, 3, H, W)
        feat = self.stem(x)  # (B, C, H, W)
        feat = feat + self.body_out(self.blocks(feat))  # (B, C, H, W)
        correction = self.head(self.upsample(feat))  # (B, 3, H*s, W*s)
        base = F.interpolate(images.float(), scale_factor=self.scale, mode="bicubic", align_corners=False)
        return (base + correction).clamp(0.0, 1.0)  # (B, 3, H*s, W*s)
