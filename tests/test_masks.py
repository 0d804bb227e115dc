"""Attention masks as data (vqgen.transformer.masks): the mask functions against the dense masks,
hand-checked small grids, and flex_attention against masked SDPA."""
import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from vqgen.errors import ConfigError
from vqgen.transformer.masks import KINDS, MaskSpec, attend

EPS = torch.finfo(torch.float32).eps

SPECS = [
    MaskSpec("full", grid=(3, 4), text_len=2),
    MaskSpec("causal", grid=(4, 4), text_len=3),
    MaskSpec("local", grid=(4, 4), window=3),
    MaskSpec("local", grid=(6, 5), window=3, text_len=4),
    MaskSpec("local", grid=(7, 7), window=5, text_len=1),
    MaskSpec("local", grid=(5, 8), window=(1, 5), text_len=2),
    MaskSpec("local", grid=(2, 3, 4), window=3, text_len=2),  # (t, h, w)
    MaskSpec("causal_local", grid=(4, 4), window=3),
    MaskSpec("causal_local", grid=(6, 7), window=3, text_len=3),
    MaskSpec("causal_local", grid=(8, 8), window=5, text_len=5),
    MaskSpec("cross_res", grid=(4, 4), low_grid=(2, 2), window=3, low_window=1, text_len=2),
    MaskSpec("cross_res", grid=(6, 6), low_grid=(2, 2), window=3, low_window=3, text_len=3),
    MaskSpec("cross_res", grid=(8, 8), low_grid=(4, 4), window=5, low_window=3),
    MaskSpec("cross_res", grid=(7, 5), low_grid=(3, 2), window=(3, 5), low_window=(3, 1), text_len=1),
    MaskSpec("coglm", grid=(4, 5), text_len=3, region=(((0, 2), (1, 3)), ((1, 4), (3, 5)))),
    MaskSpec("coglm", grid=(6, 6), text_len=4, region=(((2, 4), (0, 2)), ((3, 5), (1, 3))), predict_text=False),
    MaskSpec("coglm", grid=(2, 3, 3), text_len=2, region=(((0, 1), (1, 3), (0, 2)),)),
]
IDS = [f"{s.kind}-{'x'.join(map(str, s.grid))}-w{s.window[0]}-t{s.text_len}" for s in SPECS]


def mod_mask(spec: MaskSpec) -> torch.Tensor:
    """The mask function evaluated over all (q, kv) pairs as flex_attention does (vmap)."""
    return create_mask(spec.mask_mod(), None, None, spec.seq_len, spec.seq_len, device="cpu")[0, 0]  # (N, N)


def seen(spec: MaskSpec, cell: tuple[int, int], low: bool = False) -> set:
    """Grid cells (r, c) that the image token at ``cell`` sees in the (low or main) grid."""
    w = spec.grid[1]
    row = spec.dense()[spec.grid_start + cell[0] * w + cell[1]]  # (N,)
    start, (h, w) = (spec.text_len, spec.low_grid) if low else (spec.grid_start, spec.grid)
    return {(i // w, i % w) for i in range(h * w) if row[start + i]}


def box(r0, r1, c0, c1) -> set:
    return {(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)}


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_mask_function_matches_dense_mask_on_every_pair(spec):
    assert torch.equal(mod_mask(spec), spec.dense())


@pytest.mark.parametrize("spec", SPECS[2:], ids=IDS[2:])
def test_block_mask_holds_exactly_the_blocks_with_an_allowed_pair(spec):
    b = 8
    dense = spec.dense()  # (N, N)
    n = math.ceil(spec.seq_len / b) * b
    padded = torch.zeros(n, n, dtype=torch.bool)
    padded[: spec.seq_len, : spec.seq_len] = dense
    blocks = padded.view(n // b, b, n // b, b).any(dim=(1, 3))  # (nq, nk)
    assert torch.equal(spec.block_mask("cpu", block_size=b).to_dense()[0, 0].bool(), blocks)


def test_local_4x4_window_3_by_hand():
    spec = MaskSpec("local", grid=(4, 4), window=3)
    assert seen(spec, (0, 0)) == box(0, 1, 0, 1)
    assert seen(spec, (1, 1)) == box(0, 2, 0, 2)
    assert seen(spec, (0, 2)) == box(0, 1, 1, 3)
    assert seen(spec, (2, 3)) == box(1, 3, 2, 3)
    assert seen(spec, (3, 3)) == box(2, 3, 2, 3)
    assert spec.dense().sum().item() == 4 * 4 + 8 * 6 + 4 * 9  # 4 corners, 8 edge cells, 4 inner cells


def test_causal_local_4x4_window_3_by_hand():
    spec = MaskSpec("causal_local", grid=(4, 4), window=3)
    assert seen(spec, (0, 0)) == {(0, 0)}
    assert seen(spec, (0, 3)) == {(0, 2), (0, 3)}
    assert seen(spec, (1, 1)) == box(0, 0, 0, 2) | {(1, 0), (1, 1)}
    assert seen(spec, (3, 0)) == {(2, 0), (2, 1), (3, 0)}
    assert seen(spec, (3, 3)) == box(2, 2, 2, 3) | {(3, 2), (3, 3)}


def test_text_rows_by_hand():
    local = MaskSpec("local", grid=(4, 4), window=3, text_len=2).dense()  # (18, 18)
    assert local[:2, :2].all() and not local[:2, 2:].any()  # text sees all text, no image
    causal_local = MaskSpec("causal_local", grid=(4, 4), window=3, text_len=2).dense()  # (18, 18)
    assert causal_local[:2, :2].tolist() == [[True, False], [True, True]] and not causal_local[:2, 2:].any()


def test_cross_resolution_4x4_over_2x2_by_hand():
    spec = MaskSpec("cross_res", grid=(4, 4), low_grid=(2, 2), window=3, low_window=1, text_len=2)
    for r in range(4):
        for c in range(4):
            assert seen(spec, (r, c), low=True) == {(r // 2, c // 2)}  # the low cell under it
    assert seen(spec, (1, 1)) == box(0, 2, 0, 2)  # plus its own 3x3 window in the high grid
    wide = MaskSpec("cross_res", grid=(4, 4), low_grid=(2, 2), window=3, low_window=3)
    assert seen(wide, (0, 0), low=True) == box(0, 1, 0, 1)
    d = spec.dense()  # (2 + 4 + 16, same)
    assert d[2:6, :6].all() and not d[2:6, 6:].any()  # low tokens: text and the whole low grid only
    assert not d[:2, 2:].any()  # text: no image
    # 6x6 over 2x2 (ratio 3): high rows 0-2 sit over low row 0, rows 3-5 over low row 1.
    spec3 = MaskSpec("cross_res", grid=(6, 6), low_grid=(2, 2), window=1, low_window=1)
    assert [min(seen(spec3, (r, 4), low=True)) for r in range(6)] == [(0, 1)] * 3 + [(1, 1)] * 3


@pytest.mark.parametrize("spec", [s for s in SPECS if s.kind != "coglm"],
                         ids=[i for s, i in zip(SPECS, IDS) if s.kind != "coglm"])
def test_text_is_always_visible_to_image_tokens(spec):
    assert spec.dense()[spec.text_len:, : spec.text_len].all()


@pytest.mark.parametrize("spec", [s for s in SPECS if s.kind == "causal_local"],
                         ids=lambda s: "x".join(map(str, s.grid)))
def test_causal_local_is_local_within_causal(spec):
    local = MaskSpec("local", grid=spec.grid, window=spec.window, text_len=spec.text_len).dense()
    causal = MaskSpec("causal", grid=spec.grid, text_len=spec.text_len).dense()
    d = spec.dense()  # (N, N)
    assert not (d & ~causal).any()  # a subset of causal
    assert torch.equal(d, local & causal)
    assert d.diagonal().all()  # every token sees itself


def test_a_window_as_large_as_the_grid_is_full_attention_on_the_grid():
    spec = MaskSpec("causal_local", grid=(5, 4), window=(9, 7), text_len=3)
    assert torch.equal(spec.dense(), MaskSpec("causal", grid=(5, 4), text_len=3).dense())


def test_coglm_2x2_by_hand():
    # stream: t0 t1 | c0 c1 / c2 c3; masked: t1 (text) and c1; so t0, t1, c0 (c1's predictor), c1 are AR
    spec = MaskSpec("coglm", grid=(2, 2), text_len=2, region=(((0, 1), (1, 2)),))
    want = torch.tensor([
        [1, 0, 0, 0, 1, 1],  # t0: itself and the context cells c2, c3
        [1, 1, 0, 0, 1, 1],  # t1
        [1, 1, 1, 0, 1, 1],  # c0 predicts c1: AR up to itself, not c1
        [1, 1, 1, 1, 1, 1],  # c1
        [0, 0, 0, 0, 1, 1],  # c2, c3: context sees context only, bidirectionally
        [0, 0, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(spec.dense(), want)
    # the text as context: t1 is not masked, so t0 (predictor of nothing) is context as well
    ctx = MaskSpec("coglm", grid=(2, 2), text_len=2, region=(((0, 1), (1, 2)),), predict_text=False)
    assert ctx.dense()[0].tolist() == [True, True, False, False, True, True]  # t0 sees the context
    assert ctx.dense()[4].tolist() == [True, True, False, False, True, True]  # c2 sees the text


@pytest.mark.parametrize("spec", [s for s in SPECS if s.kind == "coglm"], ids=lambda s: "x".join(map(str, s.grid)))
def test_coglm_masked_tokens_are_unseen_by_their_predictors(spec):
    d, masked = spec.dense(), spec.masked()  # (N, N), (N,)
    for s in masked.nonzero().flatten().tolist():
        seers = d[:, s].nonzero().flatten()  # queries that see token s
        assert (seers >= s).all(), s  # not its predictor s - 1, nor any earlier masked token's
    ctx = ~(masked | torch.cat([masked[1:], torch.zeros(1, dtype=torch.bool)]))  # (N,)
    assert d[ctx][:, ctx].all() and not d[ctx][:, ~ctx].any()  # context: bidirectional, closed


def test_coglm_with_the_whole_grid_masked_is_causal():
    spec = MaskSpec("coglm", grid=(3, 4), text_len=3, region=(((0, 3), (0, 4)),))
    assert torch.equal(spec.dense(), MaskSpec("causal", grid=(3, 4), text_len=3).dense())


def attention_tolerance(q, k, v, n_keys: int) -> float:
    """Largest expected ``|a - b|`` between two float32 attention outputs over ``n_keys`` keys.

    A score ``q.k / sqrt(Dh)`` is a ``Dh``-term dot product, scaled (and in flex moved to base 2):
    ``Dh + 2`` roundings of terms whose absolute sum is at most ``s = max|q| max|k| / sqrt(Dh)``
    (row norms, Cauchy-Schwarz), so it errs by ``ds = (Dh + 2) eps s``.
    A probability is ``exp(score - max) / sum``, so it errs relatively by ``2 ds`` plus the
    rounding of the exp and of a sum of ``n_keys`` terms; the output is a ``n_keys``-term
    probability-weighted sum of values bounded by ``max|v|``. Two implementations: twice that.
    """
    dh = q.shape[-1]
    s = q.norm(dim=-1).max().item() * k.norm(dim=-1).max().item() / math.sqrt(dh)
    ds = (dh + 2) * EPS * s
    rel = 2 * ds + (n_keys + 2) * EPS
    return 2 * v.abs().max().item() * (rel + n_keys * EPS)


def qkv(spec: MaskSpec, heads: int = 2, dh: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, heads, spec.seq_len, dh, generator=g) for _ in range(3)]  # (B, H, N, Dh) each


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_flex_attention_agrees_with_masked_sdpa(spec):
    q, k, v = qkv(spec)
    ref = attend(q, k, v, spec, "sdpa")  # (B, H, N, Dh)
    got = attend(q, k, v, spec, "flex_eager")  # (B, H, N, Dh)
    diff = (got - ref).abs().max().item()
    assert diff <= attention_tolerance(q, k, v, spec.seq_len), diff


def test_every_kind_is_covered_by_the_agreement_test():
    assert {s.kind for s in SPECS} == set(KINDS)


def test_local_output_ignores_keys_outside_the_window():
    spec = MaskSpec("local", grid=(6, 6), window=3, text_len=2)
    q, k, v = qkv(spec)
    far = spec.grid_start + 5 * 6 + 5  # cell (5, 5)
    k2, v2 = k.clone(), v.clone()
    k2[..., far, :] += 10.0
    v2[..., far, :] -= 10.0
    a, b = attend(q, k, v, spec, "flex_eager"), attend(q, k2, v2, spec, "flex_eager")  # (B, H, N, Dh)
    sees = spec.dense()[:, far]  # (N,) which queries see cell (5, 5)
    assert torch.equal(a[..., ~sees, :], b[..., ~sees, :])
    assert not torch.equal(a[..., sees, :], b[..., sees, :])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "causal_local", "cross_res"])
def test_compiled_flex_agrees_with_masked_sdpa(kind):
    from vqgen.transformer.masks import flex_status
    extra = {"low_grid": (4, 4), "low_window": 3} if kind == "cross_res" else {}
    spec = MaskSpec(kind, grid=(12, 12), window=5, text_len=7, **extra)
    q, k, v = qkv(spec, dh=32)
    got = attend(q, k, v, spec, "flex")  # (B, H, N, Dh)
    assert flex_status() == "compiled"
    diff = (got - attend(q, k, v, spec, "sdpa")).abs().max().item()
    assert diff <= attention_tolerance(q, k, v, spec.seq_len), diff


@pytest.mark.parametrize("kwargs, field", [
    ({"kind": "local", "grid": (4, 4), "window": 2}, "window"),
    ({"kind": "local", "grid": (4, 4), "window": (3, 3, 3)}, "window"),
    ({"kind": "diagonal", "grid": (4, 4)}, "kind"),
    ({"kind": "local", "grid": (4, 0)}, "grid"),
    ({"kind": "cross_res", "grid": (4, 4)}, "low_grid"),
    ({"kind": "cross_res", "grid": (4, 4), "low_grid": (8, 8)}, "low_grid"),
    ({"kind": "local", "grid": (4, 4), "low_grid": (2, 2)}, "low_grid"),
    ({"kind": "local", "grid": (4, 4), "text_len": -1}, "text_len"),
    ({"kind": "coglm", "grid": (4, 4), "region": (((0, 5), (0, 2)),)}, "region"),
    ({"kind": "coglm", "grid": (4, 4), "region": (((0, 2),),)}, "region"),
    ({"kind": "local", "grid": (4, 4), "region": (((0, 2), (0, 2)),)}, "region"),
])
def test_bad_specs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        MaskSpec(**kwargs)


def test_attend_checks_backend_and_length():
    spec = MaskSpec("local", grid=(3, 3), window=3)
    q, k, v = qkv(spec)
    with pytest.raises(ConfigError, match="'backend'"):
        attend(q, k, v, spec, "triton")
    with pytest.raises(ConfigError, match="'spec'"):
        attend(q[..., 1:, :], k[..., 1:, :], v[..., 1:, :], spec, "sdpa")
