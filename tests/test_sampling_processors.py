"""Property tests: truncating processors never let a token outside their support be drawn."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqgen.errors import ConfigError
from vqgen.sampling import Chain, ClusterTopK, Temperature, TopK, TopP, sample_from

V = 24


@st.composite
def logits_and_uniforms(draw, rows: int = 4):
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([0.1, 1.0, 5.0, 20.0]))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, V, generator=g) * spread  # (B, V)
    if draw(st.booleans()):  # ties: quantised logits
        logits = logits.round()
    u = torch.tensor(draw(st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=rows, max_size=rows)))
    return logits, u


FAST = settings(max_examples=60, deadline=None)


@FAST
@given(logits_and_uniforms(), st.integers(1, V))
def test_top_k_support(lu, k):
    logits, u = lu
    tok = sample_from(TopK(k)(logits), u)  # (B,)
    kth = logits.topk(k, -1).values[:, -1]  # (B,)
    assert bool((logits.gather(1, tok[:, None]).squeeze(1) >= kth).all())


@FAST
@given(logits_and_uniforms(), st.floats(0.01, 1.0))
def test_top_p_support(lu, p):
    logits, u = lu
    tok = sample_from(TopP(p)(logits), u)  # (B,)
    probs = logits.softmax(-1)  # (B, V)
    chosen = probs.gather(1, tok[:, None])  # (B, 1)
    before = (probs * (probs > chosen)).sum(-1)  # (B,): mass strictly more likely than the draw
    assert bool((before < p + 1e-5).all())


@FAST
@given(logits_and_uniforms(), st.integers(1, 6), st.integers(1, 8), st.integers(0, 1000))
def test_cluster_support(lu, k, clusters, seed):
    logits, u = lu
    assignment = torch.randint(0, clusters, (V,), generator=torch.Generator().manual_seed(seed))
    assignment[:clusters] = torch.arange(clusters)  # every cluster used
    tok = sample_from(ClusterTopK(assignment, k)(logits), u)  # (B,)
    mass = torch.zeros(logits.shape[0], clusters).index_add_(1, assignment, logits.softmax(-1))  # (B, C)
    kth = mass.topk(min(k, clusters), -1).values[:, -1:]  # (B, 1)
    chosen = mass.gather(1, assignment[tok][:, None])  # (B, 1)
    assert bool((chosen >= kth - 1e-6).all())


@FAST
@given(logits_and_uniforms(), st.integers(1, V), st.floats(0.05, 1.0), st.floats(0.2, 3.0))
def test_chain_is_intersection_and_draw_is_in_support(lu, k, p, t):
    logits, u = lu
    out = Chain([Temperature(t), TopK(k), TopP(p)])(logits)
    tok = sample_from(out, u)
    assert bool(torch.isfinite(out.gather(1, tok[:, None])).all())
    assert bool((torch.isfinite(out).sum(-1) <= torch.isfinite(TopK(k)(logits)).sum(-1)).all())


def test_sample_matches_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf")]]).expand(4000, -1)  # (N, 4)
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(sample_from(logits, u), minlength=4).float() / 4000
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.03, rtol=0)
    assert freq[3] == 0


def test_edge_uniforms_stay_in_support():
    logits = torch.tensor([[float("-inf"), 0.0, float("-inf"), 3.0, float("-inf")]]).repeat(3, 1)
    u = torch.tensor([0.0, 0.5, 1.0 - 2**-24])
    assert sample_from(logits, u).tolist() == [1, 3, 3]


def test_invalid_processor_settings():
    for make in (lambda: TopK(0), lambda: TopP(1.5), lambda: Temperature(0.0),
                 lambda: ClusterTopK(torch.zeros(3, 2, dtype=torch.long), 1)):
        with pytest.raises(ConfigError):
            make()
