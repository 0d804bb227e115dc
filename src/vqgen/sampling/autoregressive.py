"""Autoregressive sampling with a static KV cache, logits processors and classifier-free guidance.

    codes = generate(model, cond, config=SamplingConfig(guidance_scale=3.0, top_p=0.9),
                     generator=torch.Generator().manual_seed(0))      # (B, h, w) long

The condition is written into the model's preallocated cache once (``prefill``), then one image
code per step (``decode_step``). With guidance the conditional rows and their null rows
(``cond.null()``) share one batch of 2B rows and one loop; the guided logits are formula (3) of
the seed, ``uncond + λ·(cond − uncond)``, computed with ``torch.lerp`` so that λ = 0 gives the
unconditional logits and λ = 1 the conditional ones exactly.

Randomness: all uniforms of a call are drawn before the loop, ``steps`` per row, and each step
draws by inverse CDF (:func:`~vqgen.sampling.processors.sample_from`). With one generator row
``i`` takes numbers ``i*steps ... (i+1)*steps - 1`` of its stream, so the first rows of a batch
are the same whatever the batch size; with a list of generators (one per row, e.g. from
:func:`row_generators`) every row depends on its own seed only. Codes then match across batch
sizes as far as the model's logits do: on CPU they are bit-identical across batch sizes in our
tests, while GPU matmul kernels may change with the batch and move a draw that sits on a CDF
boundary.

:func:`generate_naive` is the reference: the same plan, but ``model.forward`` over the whole
prefix at every step and separate forwards for the conditional and null rows.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from vqgen.config import require
from vqgen.errors import ConfigError
from vqgen.sampling.processors import Chain, ClusterTopK, Temperature, TopK, TopP, greedy, sample_from
from vqgen.transformer.base import Condition, KVCache, TokenModel

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample image codes. The defaults are the seed's: temperature 1.0, no truncation.

    ``temperature``: 0 = greedy (argmax). ``top_k``: 0 = off. ``top_p``: 1.0 = off. ``cluster``:
    keep the N most likely codebook clusters (CogView2's cluster sampling; needs ``clusters``),
    0 = off. ``guidance_scale``: λ of classifier-free guidance, 1.0 = off; a tuple gives one λ per
    row. ``guidance_schedule``: ``constant`` (λ at every position), ``linear`` or ``cosine`` (from
    1 at the first image position up to λ at the last). ``compile``: ``torch.compile`` the decode
    step. ``cuda_graph``: on a CUDA device, capture one decode step as a CUDA graph and replay it.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cluster: int = 0
    guidance_scale: float | tuple[float, ...] = 1.0
    guidance_schedule: Literal["constant", "linear", "cosine"] = "constant"
    compile: bool = False
    cuda_graph: bool = False

    def __post_init__(self):
        require(self.temperature >= 0, "temperature", "must be >= 0 (0 = greedy)")
        require(self.top_k >= 0, "top_k", "must be >= 0 (0 = off)")
        require(0 < self.top_p <= 1, "top_p", "must be in (0, 1] (1 = off)")
        require(self.cluster >= 0, "cluster", "must be >= 0 clusters (0 = off)")
        scales = self.guidance_scale if isinstance(self.guidance_scale, tuple) else (self.guidance_scale,)
        require(all(math.isfinite(s) for s in scales), "guidance_scale", "must be finite")
        require(self.guidance_schedule in ("constant", "linear", "cosine"), "guidance_schedule",
                "must be constant, linear or cosine")

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (null rows are added to the batch)."""
        return isinstance(self.guidance_scale, tuple) or self.guidance_scale != 1.0

    def processors(self, clusters: torch.Tensor | None = None) -> Chain:
        """The logits processors these settings ask for, in order: temperature, top-k, top-p, cluster."""
        procs = []
        if self.temperature not in (0.0, 1.0):
            procs.append(Temperature(self.temperature))
        if self.top_k:
            procs.append(TopK(self.top_k))
        if self.top_p < 1.0:
            procs.append(TopP(self.top_p))
        if self.cluster:
            if clusters is None:
                raise ConfigError("cluster sampling needs the codebook clusters: pass "
                                  "clusters=vqgen.sampling.load_clusters(model_dir)")
            procs.append(ClusterTopK(clusters, self.cluster))
        return Chain(procs)


def row_generators(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One seeded generator per row: each row's codes then depend on its own seed only."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


# ----------------------------------------------------------------------------------------- plan
@dataclass
class _Plan:
    """Everything a sampler needs besides the network, shared by the cached and naive samplers."""

    cond: Condition         # B conditional rows (on the model's device)
    null: Condition | None  # B null rows, or None without guidance
    batch: int
    prefix: torch.Tensor    # (B, k) long
    u: torch.Tensor         # (B, S) float uniforms, S = steps
    scale: torch.Tensor | None  # (B, S) guidance scale per row and step
    chain: Chain
    greedy: bool
    generator: torch.Generator | None

    @property
    def steps(self) -> int:
        return self.u.shape[1]


def _uniforms(batch: int, steps: int, generator: Generators, device) -> torch.Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        gdev = generator.device if generator is not None else "cpu"
        return torch.rand(batch, steps, generator=generator, device=gdev).to(device)  # (B, S)
    gens = list(generator)
    if len(gens) != batch:
        raise ConfigError(f"got {len(gens)} generators for {batch} rows: pass one per row")
    return torch.stack([torch.rand(steps, generator=g, device=g.device).to(device) for g in gens])  # (B, S)


def _schedule(config: SamplingConfig, batch: int, first: int, total: int, device) -> torch.Tensor:
    lam = torch.as_tensor(config.guidance_scale, dtype=torch.float32, device=device).reshape(-1)  # (B,) or (1,)
    if lam.numel() not in (1, batch):
        raise ConfigError(f"guidance_scale has {lam.numel()} values for {batch} rows")
    frac = torch.arange(first, total, dtype=torch.float32, device=device) / max(total - 1, 1)  # (S,)
    ramp = {"constant": torch.ones_like(frac), "linear": frac,
            "cosine": (1 - torch.cos(math.pi * frac)) / 2}[config.guidance_schedule]  # (S,)
    return (1 + (lam[:, None] - 1) * ramp[None, :]).expand(batch, -1).contiguous()  # (B, S)


def _plan(model: TokenModel, cond: Condition | None, num: int | None, config: SamplingConfig,
          generator: Generators, clusters: torch.Tensor | None) -> _Plan:
    device = next(model.parameters()).device
    cond = cond if cond is not None else Condition()
    rows = cond.batch_size
    if rows is None:
        batch = 1 if num is None else num
        if batch < 1:
            raise ConfigError(f"num must be >= 1, got {batch}")
        cond = model.empty_condition(batch)
    elif num is None or num == rows:
        batch = rows
    elif num > 0 and num % rows == 0:
        batch = num
        cond = cond.index(torch.arange(rows).repeat_interleave(num // rows))  # each condition num/rows times
    else:
        raise ConfigError(f"num={num} is not a multiple of the {rows} conditions given")
    cond = cond.to(device)
    if config.guided and model.cond_kind == "none":
        raise ConfigError("classifier-free guidance needs a class- or text-conditional model")
    n = model.image_seq_len
    prefix = cond.prefix_codes
    prefix = torch.zeros(batch, 0, dtype=torch.long, device=device) if prefix is None else prefix.long()
    k = prefix.shape[1]
    if k > n or (k and int(prefix.max()) >= model.codebook_size) or (k and int(prefix.min()) < 0):
        raise ConfigError(f"prefix_codes must be (B, k<={n}) codes in [0, {model.codebook_size})")
    chain = config.processors(None if clusters is None else clusters.to(device))
    return _Plan(cond=cond, null=cond.null() if config.guided else None, batch=batch, prefix=prefix,
                 u=_uniforms(batch, n - k, generator, device),
                 scale=_schedule(config, batch, k, n, device) if config.guided else None,
                 chain=chain, greedy=config.temperature == 0,
                 generator=generator if isinstance(generator, torch.Generator) else None)


class _Picker:
    """Turns one step's logits into codes: guidance, processors, draw; writes them to ``out``.
    State lives in tensors (``t``, the step index), so a step has no host sync and can be
    captured as a CUDA graph."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.t = torch.zeros(1, dtype=torch.long, device=plan.u.device)  # (1,)
        self.out = torch.zeros(plan.batch, plan.steps, dtype=torch.long, device=plan.u.device)  # (B, S)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.plan
        if p.scale is not None:
            cond, uncond = logits.chunk(2)  # (B, V) each
            logits = torch.lerp(uncond, cond, p.scale.index_select(1, self.t))  # (B, V): uncond + λ(cond − uncond)
        logits = p.chain(logits, p.generator)  # (B, V)
        tok = greedy(logits) if p.greedy else sample_from(logits, p.u.index_select(1, self.t).squeeze(1))  # (B,)
        self.out.index_copy_(1, self.t, tok[:, None])
        self.t += 1
        return tok


@contextmanager
def _eval(model: torch.nn.Module):
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was)


def _codes(model: TokenModel, plan: _Plan, out: torch.Tensor) -> torch.Tensor:
    return torch.cat([plan.prefix, out], 1).view(plan.batch, *model.grid)  # (B, h, w)


# ----------------------------------------------------------------------------------- samplers
def generate(model: TokenModel, cond: Condition | None = None, num: int | None = None,
             config: SamplingConfig = SamplingConfig(), generator: Generators = None, progress: bool = False,
             clusters: torch.Tensor | None = None) -> torch.Tensor:
    """Sample image codes (B, h, w) long with the model's KV cache.

    ``cond``: the condition (None = unconditional; ``prefix_codes`` are kept and continued).
    ``num``: rows to sample; None = one per condition row, a multiple of the rows repeats each
    condition. ``generator``: one ``torch.Generator`` for the batch or one per row.
    ``clusters``: the (V,) codebook cluster assignment for ``config.cluster``.
    """
    with _eval(model):
        plan = _plan(model, cond, num, config, generator, clusters)
        return _codes(model, plan, _Decoder(model, plan, config).run(progress))


class _Decoder:
    """The cached loop: prefill once, then one ``decode_step`` per code into a static cache."""

    def __init__(self, model: TokenModel, plan: _Plan, config: SamplingConfig):
        self.model, self.plan = model, plan
        rows = plan.batch * (2 if plan.null is not None else 1)
        self.cache: KVCache = model.new_cache(rows)
        self.pick = _Picker(plan)
        self.config = config
        self.step_fn = torch.compile(self.step, dynamic=False) if config.compile else self.step

    def step(self, logits: torch.Tensor) -> torch.Tensor:
        """Pick the next codes from ``logits`` (B', V), feed them; logits for the code after."""
        tok = self.pick(logits)  # (B,)
        if self.plan.null is not None:
            tok = tok.repeat(2)  # (2B,): the conditional rows, then their null rows
        return self.model.decode_step(tok, self.cache)  # (B', V)

    def prefill(self) -> torch.Tensor:
        p = self.plan
        both = p.cond if p.null is None else Condition.cat([p.cond, p.null])
        return self.model.prefill(both, self.cache)  # (B', V)

    def run(self, progress: bool = False) -> torch.Tensor:
        from vqgen.runtime import progress as bar

        steps = self.plan.steps
        if steps == 0:
            return self.pick.out
        logits = self.prefill()
        ticks = bar(total=steps, desc="sampling", enabled=progress)
        done = 0
        if self.config.cuda_graph and logits.is_cuda and steps > 3:
            for _ in range(2):  # warm-up steps, run for real, before capture
                logits = self.step_fn(logits)
            done = 2
            ticks.update(2)
            static = logits.clone()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static.copy_(self.step_fn(static))
            for _ in range(steps - 1 - done):
                graph.replay()
                ticks.update(1)
            logits = static
        else:
            for _ in range(steps - 1):
                logits = self.step_fn(logits)
                ticks.update(1)
        self.pick(logits)
        ticks.update(1)
        ticks.close()
        return self.pick.out  # (B, S)


def generate_naive(model: TokenModel, cond: Condition | None = None, num: int | None = None,
                   config: SamplingConfig = SamplingConfig(), generator: Generators = None,
                   clusters: torch.Tensor | None = None) -> torch.Tensor:
    """The reference sampler: ``model.forward`` over the whole prefix at every step, the
    conditional and null rows in separate forwards; same arguments and result as :func:`generate`."""
    with _eval(model):
        plan = _plan(model, cond, num, config, generator, clusters)
        k, n = plan.prefix.shape[1], model.image_seq_len
        codes = torch.zeros(plan.batch, n, dtype=torch.long, device=plan.u.device)  # (B, N)
        codes[:, :k] = plan.prefix
        pick = _Picker(plan)
        for pos in range(k, n):
            inp = codes[:, : pos + 1]  # (B, pos + 1): code ``pos`` is a placeholder the model never sees
            logits = model(inp, plan.cond).logits[:, -1]  # (B, V)
            if plan.null is not None:
                logits = torch.cat([logits, model(inp, plan.null).logits[:, -1]])  # (2B, V)
            codes[:, pos] = pick(logits)
        return codes.view(plan.batch, *model.grid)  # (B, h, w)
