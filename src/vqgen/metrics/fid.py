"""FID with any feature extractor: a callable mapping images (B, C, H, W) in [0, 1] to features
(B, D) — an Inception network a user supplies, a TorchScript file, or a small network made in a
test. Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from vqgen.errors import VqgenError

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64."""
    f = features.double().cpu().numpy()
    if f.shape[0] < 2:
        raise VqgenError("FID needs at least 2 images per set")
    return f.mean(0), np.cov(f, rowvar=False)


@torch.no_grad()
def extract_features(feature_fn: FeatureFn, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Run ``feature_fn`` over batches of images (B, 3, H, W) in [0, 1] → features (N, D)."""
    feats = [feature_fn(b).reshape(b.shape[0], -1).float().cpu() for b in batches]
    if not feats:
        raise VqgenError("no images to compute features on")
    return torch.cat(feats)


def fid(real: torch.Tensor, fake: torch.Tensor, feature_fn: FeatureFn, batch_size: int = 64) -> float:
    """Fréchet distance between features of two image sets (N, 3, H, W) in [0, 1]."""
    fr = extract_features(feature_fn, real.split(batch_size))
    ff = extract_features(feature_fn, fake.split(batch_size))
    return frechet_distance(*feature_stats(fr), *feature_stats(ff))


def load_feature_extractor(path: str | Path, device: str | torch.device = "cpu") -> FeatureFn:
    """A feature network from a local path: a TorchScript file, or a ``save_pretrained`` directory.

    A saved model's ``features(images)`` method is used when it has one, else its ``__call__``.
    """
    path = Path(path)
    if path.is_dir():
        from vqgen.io import load_pretrained

        model = load_pretrained(path, device=device).eval()
        return getattr(model, "features", model)
    if path.is_file():
        try:
            return torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as e:
            raise VqgenError(f"{path} is not a TorchScript feature network: {str(e).splitlines()[0]}") from None
    raise VqgenError(f"feature network {path} not found (give a TorchScript file or a saved model directory)")
