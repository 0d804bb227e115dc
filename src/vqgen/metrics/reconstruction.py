"""Reconstruction metrics: PSNR, SSIM and MS-SSIM (differentiable, usable as a loss).

Images are float tensors (B, C, H, W) in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Wang et al. 2003 (MS-SSIM) scale weights, coarsest last.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_C1, _C2 = 0.01 ** 2, 0.03 ** 2


def psnr(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB (data range 1): (B, C, H, W) x2 → (B,)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)  # (B,)
    return 10.0 * torch.log10(1.0 / (mse + eps))


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()  # (C, 1, k, k)


def _ssim_maps(x: torch.Tensor, y: torch.Tensor, win: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and contrast-structure terms, each (B,), with a valid Gaussian window."""
    c = x.shape[1]
    w = _gaussian_window(win, sigma, c, x.device, x.dtype)
    filt = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731  (B, C, H-k+1, W-k+1)
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x ** 2
    var_y = filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    cs = (2 * cov + _C2) / (var_x + var_y + _C2)
    lum = (2 * mu_x * mu_y + _C1) / (mu_x ** 2 + mu_y ** 2 + _C1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def _window_for(h: int, w: int, win: int) -> int:
    win = min(win, h, w)
    return win if win % 2 == 1 else win - 1


def ssim(x: torch.Tensor, y: torch.Tensor, win: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (B,), Gaussian window ``win`` (shrunk for tiny images)."""
    x, y = x.float(), y.float()
    win = _window_for(x.shape[-2], x.shape[-1], win)
    return _ssim_maps(x, y, win, sigma)[0]


def ms_ssim_levels(h: int, w: int, win: int = 11) -> int:
    """How many MS-SSIM scales (at most 5) fit an image of h x w with window ``win``."""
    levels, side = 0, min(h, w)
    while levels < len(MS_SSIM_WEIGHTS) and side >= win:
        levels, side = levels + 1, side // 2
    return max(levels, 1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, win: int = 11, sigma: float = 1.5,
            levels: int | None = None) -> torch.Tensor:
    """Multi-scale SSIM per image (B,). Differentiable, so ``1 - ms_ssim`` is a weight-free loss.

    Small images use fewer scales (as many as fit the window, weights renormalised to sum 1).
    """
    x, y = x.float(), y.float()
    levels = levels or ms_ssim_levels(x.shape[-2], x.shape[-1], win)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], device=x.device)
    weights = weights / weights.sum()
    out = torch.ones(x.shape[0], device=x.device)
    for i in range(levels):
        k = _window_for(x.shape[-2], x.shape[-1], win)
        s, cs = _ssim_maps(x, y, k, sigma)
        value = s if i == levels - 1 else cs
        out = out * value.clamp(min=1e-6) ** weights[i]
        if i < levels - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return out


# ----------------------------------------------------------------------------- FID
