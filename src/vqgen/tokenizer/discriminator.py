"""A StyleGAN2-style residual discriminator for the tokenizer's adversarial loss.

From RGB with a 1x1 conv, then residual blocks that halve the resolution (two 3x3 convs with
leaky ReLU on the main path, a 1x1 conv on the skip path, summed and scaled by 1/sqrt(2)), down
to 4x4; a minibatch-standard-deviation channel, a 3x3 conv and two linear layers give one logit
per image. (Equalized learning rate and blur filters of StyleGAN2 are left out.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.config import require
from vqgen.io import PretrainedMixin, register_model


@dataclass(frozen=True)
class DiscriminatorConfig:
    image_size: int = 256
    channels: int = 64  # at full resolution; doubles per block up to max_channels
    max_channels: int = 512
    mbstd_group: int = 4

    def __post_init__(self):
        n = self.image_size
        require(n >= 8 and n & (n - 1) == 0, "image_size", "must be a power of two >= 8")
        require(self.channels >= 1 and self.max_channels >= self.channels, "channels", "must be in [1, max_channels]")
        require(self.mbstd_group >= 1, "mbstd_group", "must be >= 1")


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)  # (B, Cin, H, W)
        h = F.avg_pool2d(F.leaky_relu(self.conv2(h), 0.2), 2)  # (B, Cout, H/2, W/2)
        s = self.skip(F.avg_pool2d(x, 2))  # (B, Cout, H/2, W/2)
        return (h + s) / math.sqrt(2)


@register_model("stylegan_discriminator")
class StyleGANDiscriminator(nn.Module, PretrainedMixin):
    """Images (B, 3, H, W) in [0, 1] → logits (B,)."""

    config_class = DiscriminatorConfig

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        ch = lambda i: min(config.channels * 2 ** i, config.max_channels)  # noqa: E731
        n_blocks = int(math.log2(config.image_size)) - 2  # down to 4x4
        self.from_rgb = nn.Conv2d(3, ch(0), 1)
        self.blocks = nn.ModuleList(_ResBlock(ch(i), ch(i + 1)) for i in range(n_blocks))
        c = ch(n_blocks)
        self.conv = nn.Conv2d(c + 1, c, 3, padding=1)
        self.fc = nn.Linear(c * 16, c)
        self.out = nn.Linear(c, 1)

    def _minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = math.gcd(b, self.config.mbstd_group)
        y = x.reshape(g, -1, c, h, w)  # (G, B/G, C, H, W)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B/G,)
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # (B, 1, H, W)
        return torch.cat([x, y], dim=1)  # (B, C+1, H, W)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.from_rgb(images * 2.0 - 1.0), 0.2)  # (B, C0, H, W)
        for block in self.blocks:
            h = block(h)
        h = F.leaky_relu(self.conv(self._minibatch_std(h)), 0.2)  # (B, C, 4, 4)
        h = F.leaky_relu(self.fc(h.flatten(1)), 0.2)  # (B, C)
        return self.out(h).squeeze(1)  # (B,)
