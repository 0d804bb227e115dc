"""Reconstruction quality and codebook health of a tokenizer over a set of images."""
from __future__ import annotations

import torch
from PIL import Image

from vqgen.metrics.fid import FeatureFn, fid
from vqgen.metrics.reconstruction import ms_ssim, ms_ssim_levels, psnr, ssim
from vqgen.tokenizer.base import VQTokenizer
from vqgen.tokenizer.quantizer import code_histogram, codebook_stats


@torch.no_grad()
def evaluate_tokenizer(model: VQTokenizer, images: torch.Tensor, cond: torch.Tensor | None = None,
                       batch_size: int = 64, feature_fn: FeatureFn | None = None,
                       device: str | torch.device = "cpu") -> dict:
    """Encode → decode ``images`` (N, 3, H, W) (uint8 or float in [0, 1]) and measure.

    Returns psnr, ssim, ms_ssim (means over images), codebook_usage (fraction of the K codes used
    over the whole set), perplexity, dead_codes (codes never used here), rfid (None without a
    ``feature_fn``) and num_images.
    """
    model.eval()
    k = model.config.quantizer.codebook_size
    counts = torch.zeros(k, dtype=torch.long)
    sums = {"psnr": 0.0, "ssim": 0.0, "ms_ssim": 0.0}
    recons = []
    n = images.shape[0]
    for start in range(0, n, batch_size):
        x = images[start:start + batch_size].to(device)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()  # (B, 3, H, W)
        c = cond[start:start + batch_size].to(device) if cond is not None else None
        codes = model.encode(x)  # (B, h, w)
        y = model.decode(codes, c)  # (B, 3, H, W)
        counts += code_histogram(codes, k)
        sums["psnr"] += psnr(y, x).sum().item()
        sums["ssim"] += ssim(y, x).sum().item()
        sums["ms_ssim"] += ms_ssim(y, x).sum().item()
        if feature_fn is not None:
            recons.append(y.cpu())
    out = {name: total / n for name, total in sums.items()}
    out.update(codebook_stats(counts))
    out["rfid"] = None
    if feature_fn is not None:
        real = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        out["rfid"] = fid(real, torch.cat(recons), feature_fn, batch_size)
    out["num_images"] = n
    out["ms_ssim_scales"] = ms_ssim_levels(images.shape[-2], images.shape[-1])
    return out


def reconstruction_grid(inputs: torch.Tensor, recons: torch.Tensor, pairs_per_row: int = 4, pad: int = 2) -> Image.Image:
    """A PNG-ready grid of (input, reconstruction) pairs, side by side, from (B, 3, H, W) tensors in [0, 1]."""
    from vqgen.data.image import image_grid

    pairs = torch.stack([inputs.float().cpu(), recons.float().cpu()], 1).flatten(0, 1)  # (2B, 3, H, W)
    return image_grid(pairs, cols=2 * pairs_per_row, pad=pad)
