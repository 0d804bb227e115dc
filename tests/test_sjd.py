"""Speculative Jacobi decoding: the multi-token cached step, greedy SJD = greedy AR, the sampled
distribution by enumeration (with a broken acceptance rule as negative control), the pipeline."""
import itertools
from dataclasses import replace

import pytest
import torch
from scipy.stats import chisquare

from tests.test_sampling import FAMILIES, gen, make_cond, make_model
from vqgen.config import get_preset
from vqgen.errors import ConfigError, VqgenError
from vqgen.sampling import SamplingConfig, generate, make_plan
from vqgen.sampling.sjd import SJDLoop, SJDStats, generate_sjd
from vqgen.transformer.base import Condition
from vqgen.transformer.vim import VIM


# ------------------------------------------------------------------------ the window step
@pytest.mark.parametrize("family", FAMILIES)
def test_decode_window_equals_single_steps(family):
    model, cond = make_model(family), make_cond(family)
    toks = torch.randint(0, model.codebook_size, (3, 5), generator=gen(0))  # (B, L)
    with torch.inference_mode():
        a, b = model.new_cache(3), model.new_cache(3)
        model.prefill(cond, a)
        model.prefill(cond, b)
        one = torch.stack([model.decode_step(toks[:, i], a) for i in range(5)], 1)  # (B, L, V)
        win = model.decode_window(toks, b)  # (B, L, V)
        assert win.shape == (3, 5, model.codebook_size)
        torch.testing.assert_close(win, one, rtol=1e-4, atol=1e-4)
        assert int(a.pos) == int(b.pos)
        # rewind past two guesses, then write other codes: as if the guesses had never been there
        b.rewind(int(b.pos) - 2)
        other = torch.randint(0, model.codebook_size, (3, 2), generator=gen(1))  # (B, 2)
        again = model.decode_window(other, b)  # (B, 2, V)
        c = model.new_cache(3)
        model.prefill(cond, c)
        ref = model.decode_window(torch.cat([toks[:, :3], other], 1), c)[:, 3:]  # (B, 2, V)
        torch.testing.assert_close(again, ref, rtol=1e-4, atol=1e-4)
        with pytest.raises(VqgenError):
            b.rewind(int(b.pos) + 1)


# ------------------------------------------------------------------------ greedy = greedy AR
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("window", [1, 3, 16])
def test_greedy_sjd_equals_greedy_ar(family, guided, window):
    model, cond = make_model(family), make_cond(family)
    cfg = SamplingConfig(temperature=0, guidance_scale=3.0 if guided else 1.0, top_k=30 if guided else 0)
    ar = generate(model, cond, config=cfg, generator=gen(1))
    stats = SJDStats()
    sjd = generate_sjd(model, cond, config=replace(cfg, decoder="sjd", sjd_window=window), generator=gen(1),
                       stats=stats)
    assert torch.equal(ar, sjd)
    assert stats.passes == 1 + len(stats.advanced) <= model.image_seq_len  # never more passes than AR
    assert sum(stats.advanced) in (model.image_seq_len - 1, model.image_seq_len)


def test_window_one_is_one_pass_per_code_and_prefix_kept():
    model = make_model("vim")
    prefix = torch.randint(0, model.codebook_size, (2, 6), generator=gen(3))
    cond = Condition(class_ids=torch.tensor([1, 2]), prefix_codes=prefix)
    stats = SJDStats()
    codes = generate_sjd(model, cond, config=SamplingConfig(sjd_window=1), generator=gen(0), stats=stats)
    assert torch.equal(codes.flatten(1)[:, :6], prefix)
    assert stats.passes == model.image_seq_len - 6  # the prefill and one pass per code but the last
    greedy = SamplingConfig(temperature=0, sjd_window=4)
    assert torch.equal(generate_sjd(model, cond, config=greedy), generate(model, cond, config=greedy))


def test_seeded_and_every_setting_runs():
    model, cond = make_model("parti"), make_cond("parti")
    cfg = SamplingConfig(decoder="sjd", guidance_scale=2.0, guidance_schedule="linear", temperature=0.8, top_p=0.9,
                         sjd_window=4, sjd_init="random")
    a = generate_sjd(model, cond, config=cfg, generator=gen(5))
    assert torch.equal(a, generate_sjd(model, cond, config=cfg, generator=gen(5)))
    assert a.shape == (3, 4, 4) and int(a.min()) >= 0 and int(a.max()) < model.codebook_size
    per_row = generate_sjd(model, cond, config=cfg, generator=[gen(s) for s in range(3)],
                           guidance=torch.tensor([1.0, 2.0, 4.0]))
    assert per_row.shape == (3, 4, 4)
    stats = SJDStats()
    generate_sjd(model, cond, config=replace(cfg, sjd_max_iters=2), generator=gen(5), stats=stats)
    assert all(a == 1 for a in stats.advanced[2:])  # past the cap, one code per pass


@pytest.mark.parametrize("field,value", [("sjd_window", 0), ("sjd_window", 2.5), ("sjd_init", "zeros"),
                                         ("sjd_max_iters", -1)])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingConfig(**{field: value})


# ------------------------------------------------------------------------ the distribution
V, GRID = 4, (2, 2)  # 4 codes on a 2x2 grid: 256 sequences, enumerable


@pytest.fixture(scope="module")
def peaked():
    """A tiny class-conditional VIM whose next-code distributions are far from uniform and
    depend strongly on the codes before (large embeddings and head), so a wrong acceptance rule
    shows."""
    torch.manual_seed(0)
    cfg = replace(get_preset("transformer", "vim-tiny").model, grid=GRID, depth=1, codebook_size=V, num_classes=2,
                  dim=32, heads=2, mlp_dim=64)
    model = VIM(cfg).eval()
    with torch.no_grad():
        for w, s in ((model.tok_emb.weight, 40), (model.start_emb.weight, 40), (model.head.weight, 15)):
            w.mul_(s)
    return model


SEQS = torch.tensor(list(itertools.product(range(V), repeat=GRID[0] * GRID[1])))  # (256, 4) every sequence


def exact_probs(model, config: SamplingConfig, cls: int) -> torch.Tensor:
    """Probability of every sequence of SEQS (256,) under the sampled distribution: the naive
    full forward, guidance mixed, processors applied, softmax, product over positions."""
    n, k = SEQS.shape
    cond = Condition(class_ids=torch.full((n,), cls))
    with torch.no_grad():
        logits = model(SEQS, cond).logits  # (n, k, V)
        if config.guidance_scale != 1:
            logits = torch.lerp(model(SEQS, cond.null()).logits, logits, config.guidance_scale)  # (n, k, V)
        logits = config.processors()(logits.reshape(n * k, V)).view(n, k, V)  # (n, k, V)
        logp = logits.log_softmax(-1).gather(-1, SEQS[..., None]).squeeze(-1)  # (n, k)
    return logp.double().sum(1).exp()  # (n,)


def counts(model, config: SamplingConfig, cls: int, total: int, accept: str | None, batch: int = 2500) -> torch.Tensor:
    """How often each sequence of SEQS came out of ``total`` samples: SJD with ``accept``, or
    the plain cached sampler for ``accept=None``."""
    g = torch.Generator().manual_seed(1234)
    got = torch.zeros(len(SEQS), dtype=torch.long)  # (256,)
    weights = V ** torch.arange(SEQS.shape[1] - 1, -1, -1)  # (4,)
    with torch.inference_mode():
        for _ in range(total // batch):
            cond = Condition(class_ids=torch.full((batch,), cls))
            if accept is None:
                codes = generate(model, cond, config=config, generator=g)
            else:
                plan = make_plan(model, cond, None, config, g)
                codes = SJDLoop(model, plan, config, g, accept=accept).run()
            got += torch.bincount((codes.flatten(1) * weights).sum(1), minlength=len(SEQS))
    return got


def chi2_pvalue(observed: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness of fit of sequence counts to exact probabilities; cells expecting fewer than 5
    are pooled. A sample in a zero-probability cell is impossible under the hypothesis: p = 0."""
    if int(observed[probs == 0].sum()):
        return 0.0
    expected = probs * observed.sum()  # (256,)
    big = expected >= 5
    obs = torch.cat([observed[big].double(), observed[~big].sum()[None].double()])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    if float(exp[-1]) < 5:  # too little pooled mass for its own cell: fold it into the largest one
        i = int(exp[:-1].argmax())
        obs[i] += obs[-1]
        exp[i] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs.numpy(), exp.numpy() * float(obs.sum() / exp.sum())).pvalue)


P_MIN = 1e-3  # the correct sampler fails with probability 1e-3; greedy acceptance gives p ~ 0 (see docs)
DIST_CONFIGS = {
    "plain": SamplingConfig(sjd_window=4),
    "guided-topk": SamplingConfig(sjd_window=3, guidance_scale=2.0, top_k=3),
    "temp-topp-random-init": SamplingConfig(sjd_window=4, sjd_init="random", temperature=0.7, top_p=0.9),
}


@pytest.mark.parametrize("name", ["plain", "guided-topk"])
@pytest.mark.parametrize("accept", ["probabilistic", "always", "no_residual"])
def test_sjd_samples_the_exact_distribution(peaked, name, accept):
    """20,000 SJD samples (8 batches of 2,500 rows: rows accept different lengths) against the
    enumerated probabilities. ``always`` (greedy acceptance) and ``no_residual`` (a rejected code
    redrawn from p instead of the residual) are negative controls: the same test must reject them."""
    config = DIST_CONFIGS[name]
    p = chi2_pvalue(counts(peaked, config, 1, 20_000, accept), exact_probs(peaked, config, 1))
    if accept == "probabilistic":
        assert p > P_MIN, f"SJD's samples do not fit the exact distribution (p={p:.2g})"
    else:
        assert p < P_MIN, f"the test cannot tell the broken rule {accept!r} from the exact one (p={p:.2g})"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DIST_CONFIGS))
@pytest.mark.parametrize("sampler", ["sjd", "autoregressive"])
def test_distribution_every_setting_slow(peaked, name, sampler):
    config = DIST_CONFIGS[name]
    got = counts(peaked, config, 0, 60_000, "probabilistic" if sampler == "sjd" else None)
    assert chi2_pvalue(got, exact_probs(peaked, config, 0)) > P_MIN


def test_plain_sampler_fits_the_same_enumeration(peaked):
    """The enumeration itself is right: the plain cached sampler passes the same test."""
    config = DIST_CONFIGS["guided-topk"]
    assert chi2_pvalue(counts(peaked, config, 1, 20_000, None), exact_probs(peaked, config, 1)) > P_MIN


# ------------------------------------------------------------------------ the pipeline
def test_pipeline_runs_with_the_sjd_decoder():
    from tests.tiny import tiny_pipeline

    pipe = tiny_pipeline("parti")
    out = pipe(["a red circle", "two blue squares"], decoder="sjd", guidance_scale=2.0, output_type="codes",
               generator=torch.Generator().manual_seed(0))
    assert out.codes.shape == (2, 4, 4)
    greedy = SamplingConfig(temperature=0, guidance_scale=2.0)
    a = pipe(["a red circle"], settings=replace(greedy, decoder="sjd", sjd_window=5), output_type="codes")
    b = pipe(["a red circle"], settings=greedy, output_type="codes")
    assert torch.equal(a.codes, b.codes)
