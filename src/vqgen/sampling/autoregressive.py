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
from typing import Sequence

import numpy as np
import torch

from vqgen.errors import ConfigError
from vqgen.sampling.processors import Chain, greedy, sample_from
from vqgen.sampling.settings import SamplingConfig
from vqgen.transformer.base import Condition, KVCache, TokenModel

Generators = torch.Generator | Sequence[torch.Generator] | None


def row_generators(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One seeded generator per row: each row's codes then depend on its own seed only."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def image_generators(seed: int, n: int, device="cpu", first: int = 0) -> list[torch.Generator]:
    """Generators for images ``first .. first+n-1`` of a request with ``seed``, each seeded from
    (seed, image index): independent streams, and the same images from ``vqgen generate --seed``
    and the server's ``seed`` however the images are batched."""
    states = [np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] for i in range(first, first + n)]
    return [torch.Generator(device=device).manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF) for s in states]


# ----------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """Everything a sampler needs besides the network, shared by every decoder of this package.

    Built once per call by :func:`make_plan`: the condition rows, their null rows when guidance
    runs, the image prefix, all uniforms of the call and the per-row, per-step guidance scale.
    """

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


def guidance_schedule(lam: torch.Tensor, schedule: str, first: int, total: int) -> torch.Tensor:
    """λ per row (B,) → λ per row and image position ``first..total-1`` (B, S): ``constant``, or a
    ``linear``/``cosine`` ramp from 1 at position 0 up to λ at the last position."""
    frac = torch.arange(first, total, dtype=torch.float32, device=lam.device) / max(total - 1, 1)  # (S,)
    ramp = {"constant": torch.ones_like(frac), "linear": frac,
            "cosine": (1 - torch.cos(math.pi * frac)) / 2}[schedule]  # (S,)
    return (1 + (lam[:, None] - 1) * ramp[None, :]).contiguous()  # (B, S)


def make_plan(model: TokenModel, cond: Condition | None, num: int | None, config: SamplingConfig,
              generator: Generators = None, clusters: torch.Tensor | None = None,
              guidance: torch.Tensor | None = None) -> Plan:
    """The plan of one sampling call (see :func:`generate` for the arguments)."""
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
    if guidance is None:
        lam = torch.full((batch,), config.guidance_scale, dtype=torch.float32, device=device)  # (B,)
    else:
        lam = guidance.to(device=device, dtype=torch.float32).reshape(-1)  # (B,)
        if lam.numel() != batch:
            raise ConfigError(f"guidance has {lam.numel()} values for {batch} rows")
    guided = bool((lam != 1).any())
    if guided and model.cond_kind == "none":
        raise ConfigError("guidance_scale: classifier-free guidance needs a class- or text-conditional model "
                          "(use 1 with an unconditional one)")
    n = model.image_seq_len
    prefix = cond.prefix_codes
    prefix = torch.zeros(batch, 0, dtype=torch.long, device=device) if prefix is None else prefix.long()
    k = prefix.shape[1]
    if k > n or (k and int(prefix.max()) >= model.codebook_size) or (k and int(prefix.min()) < 0):
        raise ConfigError(f"prefix_codes must be (B, k<={n}) codes in [0, {model.codebook_size})")
    chain = config.processors(None if clusters is None else clusters.to(device))
    return Plan(cond=cond, null=cond.null() if guided else None, batch=batch, prefix=prefix,
                u=_uniforms(batch, n - k, generator, device),
                scale=guidance_schedule(lam, config.guidance_schedule, k, n) if guided else None,
                chain=chain, greedy=config.temperature == 0,
                generator=generator if isinstance(generator, torch.Generator) else None)


class Picker:
    """Turns one step's logits into codes: guidance, processors, draw; writes them to ``out``.
    State lives in tensors (``t``, the step index), so a step has no host sync and can be
    captured as a CUDA graph."""

    def __init__(self, plan: Plan):
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


def _codes(model: TokenModel, plan: Plan, out: torch.Tensor) -> torch.Tensor:
    return torch.cat([plan.prefix, out], 1).view(plan.batch, *model.grid)  # (B, h, w)


# ----------------------------------------------------------------------------------- samplers
def generate(model: TokenModel, cond: Condition | None = None, num: int | None = None,
             config: SamplingConfig = SamplingConfig(), generator: Generators = None, progress: bool = False,
             clusters: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
    """Sample image codes (B, h, w) long with the model's KV cache (the ``autoregressive`` decoder).

    ``cond``: the condition (None = unconditional; ``prefix_codes`` are kept and continued).
    ``num``: rows to sample; None = one per condition row, a multiple of the rows repeats each
    condition. ``generator``: one ``torch.Generator`` for the batch or one per row.
    ``clusters``: the (V,) codebook cluster assignment for ``config.cluster``. ``guidance``: λ
    per row (B,) float, overriding ``config.guidance_scale``.
    """
    with _eval(model):
        plan = make_plan(model, cond, num, config, generator, clusters, guidance)
        return _codes(model, plan, CachedLoop(model, plan, config).run(progress))


class CachedLoop:
    """The cached loop: prefill once, then one ``decode_step`` per code into a static cache."""

    def __init__(self, model: TokenModel, plan: Plan, config: SamplingConfig):
        self.model, self.plan = model, plan
        rows = plan.batch * (2 if plan.null is not None else 1)
        self.cache: KVCache = model.new_cache(rows)
        self.pick = Picker(plan)
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
                   config: SamplingConfig = SamplingConfig(), generator: Generators = None, progress: bool = False,
                   clusters: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
    """The reference sampler (the ``naive`` decoder): ``model.forward`` over the whole prefix at
    every step, the conditional and null rows in separate forwards; same arguments and result as
    :func:`generate` (``progress`` is accepted and ignored)."""
    with _eval(model):
        plan = make_plan(model, cond, num, config, generator, clusters, guidance)
        k, n = plan.prefix.shape[1], model.image_seq_len
        codes = torch.zeros(plan.batch, n, dtype=torch.long, device=plan.u.device)  # (B, N)
        codes[:, :k] = plan.prefix
        pick = Picker(plan)
        for pos in range(k, n):
            inp = codes[:, : pos + 1]  # (B, pos + 1): code ``pos`` is a placeholder the model never sees
            logits = model(inp, plan.cond).logits[:, -1]  # (B, V)
            if plan.null is not None:
                logits = torch.cat([logits, model(inp, plan.null).logits[:, -1]])  # (2B, V)
            codes[:, pos] = pick(logits)
        return codes.view(plan.batch, *model.grid)  # (B, h, w)
