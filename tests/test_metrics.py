"""PSNR, SSIM, MS-SSIM and FID with a feature network made in the test."""
import math

import numpy as np
import pytest
import torch

from vqgen.errors import VqgenError
from vqgen.metrics.fid import extract_features, feature_stats, fid, frechet_distance, load_feature_extractor
from vqgen.metrics.reconstruction import ms_ssim, ms_ssim_levels, psnr, ssim


def test_psnr_known_values():
    x = torch.zeros(2, 3, 8, 8)
    y = x + 0.1  # MSE 0.01 → 20 dB
    assert torch.allclose(psnr(x, y), torch.full((2,), 20.0), atol=1e-4)
    assert psnr(x, x).min() > 90


def test_ssim_and_ms_ssim_properties(seeded):
    x = torch.rand(3, 3, 64, 64)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    assert torch.allclose(ms_ssim(x, x), torch.ones(3), atol=1e-5)
    small = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    big = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert (ssim(x, small) > ssim(x, big)).all() and (ssim(x, big) < 0.9).all()
    assert (ms_ssim(x, small) > ms_ssim(x, big)).all()
    assert torch.allclose(ssim(x, small), ssim(small, x), atol=1e-6)  # symmetric
    # constant shift: luminance term only
    c = torch.full((1, 1, 16, 16), 0.5)
    expected = (2 * 0.5 * 0.6 + 0.01 ** 2) / (0.5 ** 2 + 0.6 ** 2 + 0.01 ** 2)
    assert abs(ssim(c, c + 0.1).item() - expected) < 1e-3  # float32 variance round-off
    assert ms_ssim_levels(64, 64) == 3 and ms_ssim_levels(256, 256) == 5 and ms_ssim_levels(8, 8) == 1
    assert ssim(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)).shape == (1,)  # tiny images still work


def test_ms_ssim_is_a_differentiable_loss(seeded):
    x = torch.rand(2, 3, 32, 32)
    y = torch.rand(2, 3, 32, 32, requires_grad=True)
    (1 - ms_ssim(y, x).mean()).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_frechet_distance_closed_form():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.eye(3), 4 * np.eye(3)
    # |mu1-mu2|^2 + tr(I + 4I - 2*2I) = 5 + 3
    assert abs(frechet_distance(mu1, s1, mu2, s2) - 8.0) < 1e-8
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8


class _Features(torch.nn.Module):
    """A stand-in feature network: per-channel mean and std of a fixed random conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        h = self.conv(x)
        return torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1)  # (B, 8)


def test_fid_with_a_feature_network_made_here(tmp_path, seeded):
    net = _Features().eval()
    real = torch.rand(64, 3, 16, 16)
    assert abs(fid(real, real, net, batch_size=16)) < 1e-6
    near = (real + 0.02 * torch.randn_like(real)).clamp(0, 1)
    far = (real * 0.3).clamp(0, 1)
    assert fid(real, near, net) < fid(real, far, net)
    path = tmp_path / "features.pt"
    torch.jit.script(net).save(str(path))
    loaded = load_feature_extractor(path)
    assert torch.allclose(loaded(real[:4]), net(real[:4]))
    feats = extract_features(loaded, real.split(10))
    mu, cov = feature_stats(feats)
    assert feats.shape == (64, 8) and mu.shape == (8,) and cov.shape == (8, 8)
    with pytest.raises(VqgenError, match="not found"):
        load_feature_extractor(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(VqgenError, match="TorchScript"):
        load_feature_extractor(tmp_path / "junk.pt")
    assert math.isfinite(fid(real[:8], far[:8], net))
