"""The autoregressive sampler: cached == naive, guidance, determinism, clusters, errors."""
from dataclasses import replace

import pytest
import torch

from vqgen.config import get_preset
from vqgen.errors import ConfigError, VqgenError
from vqgen.sampling import (SamplingConfig, fit_clusters, generate, generate_naive, load_clusters, row_generators,
                            save_clusters)
from vqgen.transformer.base import Condition
from vqgen.transformer.parti import Parti
from vqgen.transformer.unified import Unified
from vqgen.transformer.vim import VIM

FAMILIES = ["vim", "parti", "unified"]


def make_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = get_preset("transformer", f"{family}-tiny").model
    cfg = replace(cfg, grid=(4, 4), depth=1, **({} if family == "vim" else {"text": replace(cfg.text, max_len=8)}))
    if family == "vim":
        return VIM(replace(cfg, num_classes=5))
    return (Parti if family == "parti" else Unified)(cfg)


def make_cond(family: str, batch: int = 3, seed: int = 0) -> Condition:
    g = torch.Generator().manual_seed(seed)
    if family == "vim":
        return Condition(class_ids=torch.randint(0, 5, (batch,), generator=g))
    ids = torch.randint(1, 200, (batch, 8), generator=g)
    mask = torch.arange(8)[None, :] < torch.randint(2, 9, (batch, 1), generator=g)  # (B, 8) ragged prompts
    return Condition(text_ids=ids * mask, text_mask=mask)


def gen(seed: int):
    return torch.Generator().manual_seed(seed)


CONFIGS = {
    "greedy": SamplingConfig(temperature=0),
    "plain": SamplingConfig(),
    "truncated": SamplingConfig(temperature=0.8, top_k=20, top_p=0.9),
    "guided": SamplingConfig(guidance_scale=3.0, top_k=30),
    "guided-per-row-scheduled": SamplingConfig(guidance_schedule="cosine"),
}
ROW_GUIDANCE = {"guided-per-row-scheduled": torch.tensor([0.0, 2.0, 5.0])}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_equals_naive(family, name):
    model, cond = make_model(family), make_cond(family)
    lam = ROW_GUIDANCE.get(name)
    a = generate(model, cond, config=CONFIGS[name], generator=gen(1), guidance=lam)
    b = generate_naive(model, cond, config=CONFIGS[name], generator=gen(1), guidance=lam)
    assert a.shape == (3, 4, 4) and a.dtype == torch.long
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_is_kept_and_continued(family):
    model = make_model(family)
    prefix = torch.randint(0, model.codebook_size, (3, 6))
    cond = replace(make_cond(family), prefix_codes=prefix)
    cfg = SamplingConfig(guidance_scale=2.0)
    a = generate(model, cond, config=cfg, generator=gen(2))
    assert torch.equal(a.flatten(1)[:, :6], prefix)
    assert torch.equal(a, generate_naive(model, cond, config=cfg, generator=gen(2)))


def test_unconditional_model_and_num():
    model = VIM(replace(make_model("vim").config, num_classes=0))
    a = generate(model, None, num=4, generator=gen(0))
    assert a.shape == (4, 4, 4)
    assert torch.equal(a, generate_naive(model, None, num=4, generator=gen(0)))
    assert not torch.equal(a, generate(model, None, num=4, generator=gen(1)))
    with pytest.raises(ConfigError, match="guidance"):
        generate(model, None, num=2, config=SamplingConfig(guidance_scale=2.0))


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_endpoints(family):
    """λ = 0 is unconditional sampling (null condition) and λ = 1 conditional sampling, exactly."""
    model, cond = make_model(family), make_cond(family)
    uncond = generate(model, cond.null(), config=SamplingConfig(top_p=0.95), generator=gen(3))
    assert torch.equal(generate(model, cond, config=SamplingConfig(guidance_scale=0.0, top_p=0.95),
                                generator=gen(3)), uncond)
    plain = generate(model, cond, config=SamplingConfig(top_p=0.95), generator=gen(3))
    rows = generate(model, cond, config=SamplingConfig(top_p=0.95), guidance=torch.tensor([1.0, 0.0, 1.0]),
                    generator=gen(3))  # per-row λ: rows 0 and 2 conditional, row 1 unconditional, exactly
    assert torch.equal(rows[0::2], plain[0::2]) and torch.equal(rows[1], uncond[1])
    assert not torch.equal(plain, uncond)


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_batch_equals_two_forwards(family):
    """One cache of 2B rows (conditional then null) gives the logits of two separate caches."""
    model, cond = make_model(family).eval(), make_cond(family)
    tokens = torch.randint(0, model.codebook_size, (5, 3))
    with torch.inference_mode():
        both = model.new_cache(6)
        lb = [model.prefill(Condition.cat([cond, cond.null()]), both)]
        caches = [model.new_cache(3), model.new_cache(3)]
        ls = [torch.cat([model.prefill(cond, caches[0]), model.prefill(cond.null(), caches[1])])]
        for t in tokens:
            lb.append(model.decode_step(t.repeat(2), both))
            ls.append(torch.cat([model.decode_step(t, c) for c in caches]))
    torch.testing.assert_close(torch.stack(lb), torch.stack(ls), rtol=1e-5, atol=1e-5)


def test_guidance_changes_samples_and_schedule_is_monotone():
    model, cond = make_model("vim"), make_cond("vim")
    a = generate(model, cond, config=SamplingConfig(guidance_scale=1.0), generator=gen(4))
    b = generate(model, cond, config=SamplingConfig(guidance_scale=8.0), generator=gen(4))
    assert not torch.equal(a, b)
    from vqgen.sampling import guidance_schedule

    s = guidance_schedule(torch.tensor([0.0, 4.0]), "linear", 0, 16)
    assert s.shape == (2, 16)
    assert s[:, 0].tolist() == [1.0, 1.0] and s[:, -1].tolist() == [0.0, 4.0]
    assert bool((s[1].diff() >= 0).all())


@pytest.mark.parametrize("guided", [False, True])
def test_row_generators_are_batch_size_invariant(guided):
    model, cond = make_model("vim"), make_cond("vim", batch=4)
    cfg = SamplingConfig(guidance_scale=3.0 if guided else 1.0)
    full = generate(model, cond, config=cfg, generator=row_generators([10, 11, 12, 13]))
    for i in range(4):
        one = generate(model, cond.index(slice(i, i + 1)), config=cfg, generator=row_generators([10 + i]))
        assert torch.equal(full[i], one[0])
    # one generator for the batch: the first rows do not depend on the batch size
    a = generate(model, cond, config=cfg, generator=gen(7))
    assert torch.equal(a[:2], generate(model, cond.index(slice(0, 2)), config=cfg, generator=gen(7)))


def test_num_repeats_each_condition_and_seed_determinism():
    model, cond = make_model("unified"), make_cond("unified", batch=2)
    a = generate(model, cond, num=6, generator=gen(5))
    assert a.shape == (6, 4, 4)
    assert torch.equal(a, generate(model, cond, num=6, generator=gen(5)))
    rep = Condition(text_ids=cond.text_ids.repeat_interleave(3, 0), text_mask=cond.text_mask.repeat_interleave(3, 0))
    assert torch.equal(a, generate(model, rep, generator=gen(5)))
    with pytest.raises(ConfigError, match="multiple"):
        generate(model, cond, num=3)


def test_cluster_sampling_stays_in_top_clusters(tmp_path):
    model, cond = make_model("vim"), make_cond("vim")
    emb = torch.randn(model.codebook_size, 8, generator=gen(0))
    assignment = fit_clusters(emb, 16, seed=0)
    assert assignment.shape == (model.codebook_size,) and set(assignment.tolist()) == set(range(16))
    assert torch.equal(assignment, fit_clusters(emb, 16, seed=0))
    save_clusters(tmp_path, assignment)
    loaded = load_clusters(tmp_path)
    assert torch.equal(loaded, assignment)
    cfg = SamplingConfig(cluster=1)
    a = generate(model, cond, config=cfg, generator=gen(6), clusters=loaded)
    assert torch.equal(a, generate_naive(model, cond, config=cfg, generator=gen(6), clusters=loaded))
    # with one cluster kept, every code of a row's step lies in the most likely cluster of that step
    with torch.inference_mode():
        logits = model.eval()(a.flatten(1), cond).logits  # (B, N, V)
    mass = torch.zeros(3, 16, 16).index_add_(2, assignment, logits.softmax(-1))  # (B, N, C)
    assert torch.equal(assignment[a.flatten(1)], mass.argmax(-1))


def test_kmeans_recovers_separated_groups():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = centers.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 2, generator=gen(0))  # (60, 2)
    a = fit_clusters(x, 3, seed=1)
    for g in range(3):
        assert len(set(a[g * 20:(g + 1) * 20].tolist())) == 1
    assert len(set(a.tolist())) == 3


def test_errors_are_clear(tmp_path):
    model, cond = make_model("vim"), make_cond("vim")
    with pytest.raises(ConfigError, match="clusters"):
        generate(model, cond, config=SamplingConfig(cluster=4))
    with pytest.raises(VqgenError, match="clusters.safetensors"):
        load_clusters(tmp_path)
    with pytest.raises(ConfigError, match="generators"):
        generate(model, cond, generator=row_generators([1, 2]))
    with pytest.raises(ConfigError, match="guidance"):
        generate(model, cond, guidance=torch.tensor([1.0, 2.0]))
    with pytest.raises(ConfigError, match="prefix_codes"):
        generate(model, replace(cond, prefix_codes=torch.full((3, 2), 999)))
    for bad in (dict(temperature=-1), dict(top_p=0.0), dict(top_k=-2), dict(guidance_schedule="step"),
                dict(guidance_scale=float("nan")), dict(guidance_scale=-1.0), dict(rerank=0), dict(rerank=10_000),
                dict(top_k=1.5), dict(temperature=True), dict(guidance_scale=(1.0, 2.0))):
        with pytest.raises(ConfigError):
            SamplingConfig(**bad)
    with pytest.raises(ConfigError, match="num_clusters"):
        fit_clusters(torch.randn(4, 2), 5)


def test_training_mode_is_restored():
    model = make_model("parti").train()
    generate(model, make_cond("parti"), generator=gen(0))
    assert model.training


@pytest.mark.slow
def test_compiled_step_matches_eager():
    model, cond = make_model("unified"), make_cond("unified")
    cfg = SamplingConfig(guidance_scale=2.0, top_k=20)
    a = generate(model, cond, config=cfg, generator=gen(8))
    assert torch.equal(a, generate(model, cond, config=replace(cfg, compile=True), generator=gen(8)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_graph_matches_eager(family):
    model, cond = make_model(family).cuda(), make_cond(family)
    cfg = SamplingConfig(guidance_scale=2.0, top_p=0.9)
    a = generate(model, cond, config=cfg, generator=gen(9))
    b = generate(model, cond, config=replace(cfg, cuda_graph=True), generator=gen(9))
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_decode_step_traces_as_one_graph(family):
    """No host read inside a step (e.g. of the cache position): it compiles whole and can be
    captured as a CUDA graph."""
    import torch._dynamo as dynamo

    from vqgen.sampling import CachedLoop, make_plan

    model, cond = make_model(family).eval(), make_cond(family)
    config = SamplingConfig(guidance_scale=2.0, top_k=8)
    loop = CachedLoop(model, make_plan(model, cond, None, config, gen(0)), config)
    with torch.inference_mode():
        explained = dynamo.explain(loop.step)(loop.prefill())
    assert explained.graph_count == 1 and explained.graph_break_count == 0
