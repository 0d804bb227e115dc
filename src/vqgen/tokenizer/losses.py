"""Tokenizer losses: logit-Laplace, L2, MS-SSIM, an LPIPS-style VGG perceptual loss and the GAN loss.

Each term has a weight in ``LossConfig``. The decoder predicts, per pixel, a mean through a
sigmoid and a log-scale of a logit-Laplace distribution over pixels squeezed into
[eps, 1 - eps] (as in DALL-E's dVAE); the reconstruction is that mean mapped back to [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.config import require
from vqgen.errors import ConfigError, VqgenError
from vqgen.metrics.reconstruction import ms_ssim

LOGIT_LAPLACE_EPS = 0.1


@dataclass(frozen=True)
class LossConfig:
    l2: float = 1.0
    logit_laplace: float = 0.01
    perceptual: float = 0.0  # LPIPS-style on VGG16 features; needs vgg_path
    vgg_path: str | None = None  # a local VGG16 state dict (torchvision layout, .pth or .safetensors)
    ms_ssim: float = 0.0  # 1 - MS-SSIM: a weight-free perceptual substitute
    gan: float = 0.0  # generator's adversarial loss weight (StyleGAN-style discriminator)
    gan_start: int = 0  # step from which the GAN loss (and the discriminator's training) is on
    vq: float = 1.0  # weight of the quantizer's codebook + commitment loss

    def __post_init__(self):
        for name in ("l2", "logit_laplace", "perceptual", "ms_ssim", "gan", "vq"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        require(self.gan_start >= 0, "gan_start", "must be >= 0")


def mean_from_logits(mean_logits: torch.Tensor) -> torch.Tensor:
    """Decoder mean logits → pixels in [0, 1] (undo the [eps, 1 - eps] squeeze)."""
    eps = LOGIT_LAPLACE_EPS
    return ((torch.sigmoid(mean_logits) - eps) / (1 - 2 * eps)).clamp(0.0, 1.0)


def logit_laplace_nll(mean_logits: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per pixel of ``target`` in [0, 1] under logit-Laplace(mu, b).

    density(x') = exp(-|logit(x') - mu| / b) / (2 b x' (1 - x')),  x' = eps + (1 - 2 eps) x.
    """
    eps = LOGIT_LAPLACE_EPS
    x = eps + (1 - 2 * eps) * target.float()  # (B, 3, H, W) in [eps, 1 - eps]
    log_scale = log_scale.clamp(-7.0, 7.0)
    nll = (torch.logit(x) - mean_logits).abs() * torch.exp(-log_scale) + log_scale + math.log(2.0) \
        + torch.log(x * (1 - x))
    return nll.mean()


# ----------------------------------------------------------------------------- VGG16 / LPIPS-style
# VGG16 "features" in torchvision's layout: convs at these indices, max-pools after 4, 9, 16, 23.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_LPIPS_TAPS = (3, 8, 15, 22, 29)  # after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_features() -> nn.Sequential:
    """An untrained VGG16 feature stack with torchvision's module indices (``features.N.*`` keys)."""
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable file is the same user error)
        raise VqgenError(f"cannot read VGG weights {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise VqgenError(f"VGG weights {path} must hold a state dict")
    return state


class VGGPerceptualLoss(nn.Module):
    """LPIPS-style distance: unit-normalised VGG16 features at five depths, squared differences
    averaged over channels and positions, summed over depths. The VGG weights are frozen.

    Use ``from_file(path)`` with a VGG16 state dict in torchvision's layout (``features.N.weight``
    or ``N.weight``; classifier keys are ignored).
    """

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features.eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | Path) -> "VGGPerceptualLoss":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config field 'loss.vgg_path': VGG16 weights file {path} not found")
        state = _load_state_dict(path)
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        features = vgg16_features()
        missing, unexpected = features.load_state_dict(state, strict=False)
        if missing or unexpected:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
            raise VqgenError(f"{path} is not a VGG16 state dict ({what})")
        return cls(features)

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # frozen: always in eval mode
        return self

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _LPIPS_TAPS:
                out.append(h)
            if i >= _LPIPS_TAPS[-1]:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between images (B, 3, H, W) in [0, 1], averaged over the batch → ()."""
        total = x.new_zeros(())
        for fx, fy in zip(self._taps(x.float()), self._taps(y.float())):
            fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)  # (B, C, h, w)
            fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            total = total + (fx - fy).pow(2).sum(1).mean()
        return total


# ----------------------------------------------------------------------------- GAN
def gan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss (StyleGAN): softplus(-D(G(z)))."""
    return F.softplus(-fake_logits.float()).mean()


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss: softplus(-D(x)) + softplus(D(G(z)))."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


class ReconstructionLoss(nn.Module):
    """The generator-side objective: weighted sum of the enabled terms.

    Returns the total and a dict of the unweighted terms (for logging).
    """

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.perceptual = None
        if cfg.perceptual > 0:
            if not cfg.vgg_path:
                raise ConfigError("config field 'loss.vgg_path' is missing: loss.perceptual > 0 needs a local "
                                  "VGG16 weights file (or use loss.ms_ssim, which needs no weights)")
            self.perceptual = VGGPerceptualLoss.from_file(cfg.vgg_path)

    def forward(self, images: torch.Tensor, out, step: int, discriminator: nn.Module | None = None):
        cfg = self.cfg
        terms = dict(out.losses)
        total = cfg.vq * terms["vq"] + cfg.l2 * terms["l2"]
        if cfg.logit_laplace > 0:
            total = total + cfg.logit_laplace * terms["logit_laplace"]
        if cfg.ms_ssim > 0:
            terms["ms_ssim"] = 1.0 - ms_ssim(out.reconstruction, images).mean()
            total = total + cfg.ms_ssim * terms["ms_ssim"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(out.reconstruction, images)
            total = total + cfg.perceptual * terms["perceptual"]
        if discriminator is not None and cfg.gan > 0 and step >= cfg.gan_start:
            terms["gan_g"] = gan_generator_loss(discriminator(out.reconstruction))
            total = total + cfg.gan * terms["gan_g"]
        return total, terms
