"""LoPAR (local parallel autoregression) and direct super-resolution: the local order, the two
limits (1x1 window = one parallel pass; a grid-sized window in raster order = plain
autoregression), pass counts and grouping, and the decoders' shared randomness."""
from __future__ import annotations

import pytest
import torch

from vqgen.errors import ConfigError
from vqgen.sampling import SamplingConfig
from vqgen.sampling.direct_sr import HierarchicalStats, generate_direct_sr, sr_draw
from vqgen.sampling.lopar import generate_lopar, local_steps, lopar_fill, pass_of_step, passes_needed, remask
from tests.test_hierarchical import tiny_hierarchical


def _setup(seed: int = 0):
    _, sr = tiny_hierarchical()
    g = torch.Generator().manual_seed(seed)
    cond = sr.text_condition(["a red circle", "two blue squares", "a small yellow square"])
    low = torch.randint(0, 16, (3, 4), generator=g)
    codes = torch.randint(0, 64, (3, 16), generator=g)
    masked = torch.rand(3, 16, generator=g) < 0.6
    u = torch.rand(3, 16, generator=g)
    return sr, (lambda x: sr.sr_logits(low, x, cond)), codes, masked, u


def test_local_order_is_the_anti_diagonals_of_each_window():
    want = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]])
    steps = local_steps((8, 8), 4).view(8, 8)
    assert torch.equal(steps[:4, :4], want) and torch.equal(steps[4:, 4:], want)  # same order in every window
    assert torch.equal(local_steps((4, 4), 4, "raster"), torch.arange(16))
    assert local_steps((5, 5), 4).view(5, 5)[4, 4] == 0  # a window clipped at the border starts over
    assert int(local_steps((16, 16), 4).max()) + 1 == 7  # 7 passes for 256 cells
    assert pass_of_step(local_steps((16, 16), 4), 3).unique().tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="lopar_order"):
        local_steps((4, 4), 2, "spiral")


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_a_one_by_one_window_is_one_parallel_pass(temperature):
    sr, predict, codes, masked, u = _setup()
    cfg = SamplingConfig(lopar_window=1, sr_temperature=temperature)
    out, passes = lopar_fill(predict, codes, masked, u, sr.grid, sr.mask_id, cfg)
    once = sr_draw(predict(codes.masked_fill(masked, sr.mask_id)), u, cfg)  # (B, N)
    assert passes == 1
    assert torch.equal(out, torch.where(masked, once, codes))


def test_a_grid_sized_window_in_raster_order_is_plain_autoregression():
    sr, predict, codes, masked, u = _setup()
    cfg = SamplingConfig(lopar_window=4, lopar_order="raster")
    out, passes = lopar_fill(predict, codes, masked, u, sr.grid, sr.mask_id, cfg)
    ref, left, n = codes.clone(), masked.clone(), 0
    for i in range(16):  # one cell per pass, in raster order, each from the cells before it
        if not left[:, i].any():
            continue
        tok = sr_draw(predict(ref.masked_fill(left, sr.mask_id)), u, cfg)[:, i]
        ref[:, i] = torch.where(left[:, i], tok, ref[:, i])
        left[:, i] = False
        n += 1
    assert torch.equal(out, ref) and passes == n == int(masked.any(0).sum())
    assert torch.equal(out[~masked], codes[~masked])  # unmasked cells are kept


def test_passes_depend_on_the_window_not_the_grid():
    sr, predict, codes, _, u = _setup()
    every = torch.ones_like(codes, dtype=torch.bool)
    for window, want in ((1, 1), (2, 3), (4, 7)):
        cfg = SamplingConfig(lopar_window=window)
        _, passes = lopar_fill(predict, codes, every, u, sr.grid, sr.mask_id, cfg)
        assert passes == want == passes_needed(sr.grid, cfg)
    assert passes_needed((16, 16), SamplingConfig(lopar_window=4)) == 7
    assert passes_needed((16, 16), SamplingConfig(lopar_window=4, lopar_passes=3)) == 3
    assert passes_needed((16, 16), SamplingConfig(lopar_remask=0)) == 0


def test_remask_picks_the_asked_fraction():
    u = torch.rand(4, 256, generator=torch.Generator().manual_seed(0))
    assert remask(u, 0.75).sum(1).tolist() == [192] * 4
    assert not remask(u, 0.0).any() and remask(u, 1.0).all()


def test_lopar_without_remask_is_direct_super_resolution():
    _, sr = tiny_hierarchical()
    cond = sr.text_condition(["a red circle", "two blue squares"])
    stats = HierarchicalStats()
    direct = generate_direct_sr(sr, cond, num=4, generator=torch.Generator().manual_seed(5), stats=stats)
    assert stats.sr_passes == 1 and stats.low_steps == 4
    same = generate_lopar(sr, cond, num=4, config=SamplingConfig(lopar_remask=0.0),
                          generator=torch.Generator().manual_seed(5), stats=stats)
    assert torch.equal(direct, same) and stats.sr_passes == 1
    refined = generate_lopar(sr, cond, num=4, config=SamplingConfig(lopar_remask=1.0, lopar_window=2),
                             generator=torch.Generator().manual_seed(5), stats=stats)
    assert stats.sr_passes == 1 + 3 and refined.shape == (4, 4, 4)
    rows = [torch.Generator().manual_seed(s) for s in range(4)]
    both = generate_lopar(sr, cond, num=4, generator=rows)
    alone = generate_lopar(sr, cond.index(torch.tensor([1])), num=1, generator=[torch.Generator().manual_seed(2)])
    assert torch.equal(both[2], alone[0])  # one generator per row: a row's codes do not depend on the batch
