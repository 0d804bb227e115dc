"""Speculative Jacobi decoding (SJD, Teng et al. 2024): several image codes per forward pass,
sampled from exactly the distribution of the plain autoregressive sampler.

    codes = generate_sjd(model, cond, config=SamplingConfig(decoder="sjd", sjd_window=16),
                         generator=torch.Generator().manual_seed(0))     # (B, h, w) long

Each pass feeds a window of ``L`` codes through the model at once (``decode_window``): the first
is final, the other ``L - 1`` are guesses, each drawn earlier from a recorded proposal ``q``. The
pass gives the target distribution ``p`` (guidance mixed with ``torch.lerp``, then the logits
processors, then softmax: what :class:`~vqgen.sampling.autoregressive.Picker` draws from) at every
window position. Guesses are checked left to right: guess ``x`` is accepted with probability
``min(1, p(x) / q(x))``; the first rejected one is replaced by a draw from the residual
``normalize(max(0, p − q))`` (after ``L - 1`` acceptances, a draw from ``p`` of the last
position). That is speculative sampling's rule, so every written code is a draw from ``p`` given
the codes before it. The cache is rewound to the accepted length (``KVCache.rewind``); the
positions after the new final code get new guesses: drawn from this pass's ``p`` where the pass
computed one (the Jacobi update), beyond it from the window's last ``p`` (``sjd_init="last"``) or
uniformly (``"random"``); each guess records its ``q``.

Batches: rows may accept different lengths, and the cache has one position for all rows. The
batch advances by its shortest accepted run; a row that got further keeps its extra codes as
*final* (they are already exact draws): the next pass feeds them again without a new test, so
no row's codes depend on whether other rows accepted. Greedy (``temperature=0``) guesses and
checks with argmax, and gives exactly the codes of greedy autoregressive decoding.

Randomness: every pass draws its uniforms (acceptance, residual, guesses) from the given
generator (or one per row) inside the loop, so SJD's codes are a sample of the same
distribution as :func:`~vqgen.sampling.autoregressive.generate`'s but not the same codes for
the same seed, and a row's codes depend on the batch it shares passes with.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vqgen.errors import ConfigError
from vqgen.sampling.autoregressive import Generators, Plan, _codes, _eval, _uniforms, make_plan
from vqgen.sampling.settings import SamplingConfig
from vqgen.transformer.base import Condition, KVCache, TokenModel

# "always" (greedy acceptance) and "no_residual" (redraw a rejected code from p, not from the
# residual) are wrong rules: negative controls for the tests only
ACCEPT_RULES = ("probabilistic", "always", "no_residual")


@dataclass
class SJDStats:
    """What one call did: forward ``passes`` (the prefill included; guided rows share a pass),
    ``codes`` written per row and the number of codes the batch advanced in each window pass."""

    passes: int = 0
    codes: int = 0
    advanced: list[int] = field(default_factory=list)


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from ``probs`` (..., V) with uniforms ``u`` (...,); (...,) long.
    A zero-probability code is never drawn."""
    cdf = probs.cumsum(-1)  # (..., V)
    total = cdf[..., -1:]  # (..., 1)
    x = torch.minimum(u[..., None].to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))  # (..., 1)
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)  # (...,)


class SJDLoop:
    """The SJD loop over one :class:`Plan`: prefill once, then window passes until every row is
    written. ``accept="always"`` replaces the acceptance test by greedy acceptance and
    ``"no_residual"`` redraws a rejected code from ``p``: broken rules, for the tests' negative
    controls only."""

    def __init__(self, model: TokenModel, plan: Plan, config: SamplingConfig, generator: Generators = None,
                 accept: str = "probabilistic"):
        if accept not in ACCEPT_RULES:
            raise ConfigError(f"accept must be one of {', '.join(ACCEPT_RULES)}, got {accept!r}")
        self.model, self.plan, self.accept = model, plan, accept
        self.window, self.init, self.max_iters = config.sjd_window, config.sjd_init, config.sjd_max_iters
        self.generator = generator
        self.guided = plan.null is not None
        self.cache: KVCache = model.new_cache(plan.batch * (2 if self.guided else 1))
        self.stats = SJDStats()

    # -- distributions --------------------------------------------------------------------
    def target(self, logits: torch.Tensor, first: int) -> torch.Tensor:
        """Raw logits (B', n, V) for steps ``first..first+n-1`` → the sampled distribution
        (B, n, V): guidance mixed per row and step, processors applied, softmax."""
        p = self.plan
        if self.guided:
            cond, uncond = logits.chunk(2)  # (B, n, V) each
            last = p.scale.shape[1] - 1
            steps = torch.arange(first, first + logits.shape[1], device=logits.device).clamp_(max=last)  # (n,)
            logits = torch.lerp(uncond, cond, p.scale[:, steps, None])  # (B, n, V): uncond + λ(cond − uncond)
        b, n, v = logits.shape
        logits = p.chain(logits.reshape(b * n, v), p.generator).view(b, n, v)  # (B, n, V)
        if p.greedy:  # a point mass on the argmax: guesses and checks become exact matches
            return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)  # (B, n, V)
        return logits.float().softmax(-1)  # (B, n, V)

    def uniforms(self, n: int) -> torch.Tensor:
        """``n`` fresh uniforms per row from the call's generator(s): (B, n)."""
        return _uniforms(self.plan.batch, n, self.generator, self.plan.u.device)  # (B, n)

    def guesses(self, probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Guesses from ``probs`` (B, n, V) with uniforms (B, n): a draw, or the argmax when greedy."""
        return probs.argmax(-1) if self.plan.greedy else draw(probs, u)  # (B, n)

    def fresh(self, last: torch.Tensor, n: int, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` guesses past the computed positions, and their proposals: (B, n), (B, n, V)."""
        b, v = last.shape
        if self.init == "random":
            q = torch.full((b, n, v), 1.0 / v, device=last.device)  # (B, n, V)
            return (u * v).long().clamp_(max=v - 1), q
        q = last[:, None].expand(b, n, v)  # (B, n, V)
        return self.guesses(q, u), q

    # -- the loop -------------------------------------------------------------------------
    def prefill(self) -> torch.Tensor:
        """Write the condition rows (and their null rows) into the cache: raw logits (B', V)."""
        p = self.plan
        both = p.cond if p.null is None else Condition.cat([p.cond, p.null])
        self.stats.passes += 1
        return self.model.prefill(both, self.cache)  # (B', V)

    def run(self, progress: bool = False) -> torch.Tensor:
        """Write every row's codes; (B, S) long."""
        from vqgen.runtime import progress as bar

        p, L = self.plan, self.window
        b, steps = p.batch, p.steps
        out = torch.zeros(b, steps, dtype=torch.long, device=p.u.device)  # (B, S)
        if steps == 0:
            return out
        rows = torch.arange(b, device=out.device)  # (B,)
        p0 = self.target(self.prefill()[:, None], 0)[:, 0]  # (B, V)
        u = self.uniforms(L)  # (B, L)
        win = torch.empty(b, L, dtype=torch.long, device=out.device)  # (B, L): step t, then guesses
        q = torch.empty(b, L, p0.shape[-1], device=out.device)  # (B, L, V): each guess's proposal
        win[:, 0] = self.guesses(p0[:, None], u[:, :1])[:, 0]
        win[:, 1:], q[:, 1:] = self.fresh(p0, L - 1, u[:, 1:])
        known = torch.zeros(b, dtype=torch.long, device=out.device)  # (B,) final codes after win[:, 0]
        t, start = 0, int(self.cache.pos)
        ticks = bar(total=steps, desc="sampling (sjd)", enabled=progress)
        while t < steps - 1:
            window = 1 if self.max_iters and len(self.stats.advanced) >= self.max_iters else L
            n = min(window, steps - t)  # codes fed this pass: steps t .. t+n-1
            m_out = n if t + n < steps else n - 1  # outputs that predict a step of the image
            feed = win[:, :n].repeat(2, 1) if self.guided else win[:, :n]  # (B', n)
            logits = self.model.decode_window(feed, self.cache)  # (B', n, V)
            self.stats.passes += 1
            pn = self.target(logits[:, :m_out], t + 1)  # (B, m_out, V): output j is step t+1+j
            g = n - 1  # guesses checked this pass, at steps t+1 .. t+n-1
            u = self.uniforms(g + 1 + m_out + L)  # (B, ·): tests, residual draw, Jacobi guesses, fresh guesses
            guess = win[:, 1:n]  # (B, g)
            if self.accept == "always":
                ok = torch.ones_like(guess, dtype=torch.bool)  # (B, g)
            elif p.greedy:
                ok = guess == pn[:, :g].argmax(-1)  # (B, g)
            else:
                p_x = pn[:, :g].gather(-1, guess[..., None]).squeeze(-1)  # (B, g)
                q_x = q[:, 1:n].gather(-1, guess[..., None]).squeeze(-1)  # (B, g)
                ok = u[:, :g] * q_x < p_x  # (B, g): accept with probability min(1, p/q)
            ok |= torch.arange(g, device=ok.device)[None] < known[:, None]  # codes already final
            acc = ok.long().cumprod(1).sum(1)  # (B,) leading accepted guesses
            # the code after the accepted run: residual of the first rejection, or a draw from p
            j = acc.clamp(max=m_out - 1)  # (B,) output that predicts step t+1+acc
            pj = pn[rows, j]  # (B, V)
            rejected = (acc < g) & (self.accept != "no_residual")  # (B,)
            qj = q[rows, (acc + 1).clamp(max=L - 1)]  # (B, V)
            res = torch.where(rejected[:, None], (pj - qj).clamp_(min=0), pj)  # (B, V)
            res = torch.where(res.sum(-1, keepdim=True) > 0, res, pj)  # (B, V): p == q leaves no residual
            nxt = self.guesses(res[:, None], u[:, g:g + 1])[:, 0]  # (B,)
            adv = int(acc.min())  # the batch advances by its shortest run
            out[:, t:t + 1 + adv] = win[:, :1 + adv]
            self.cache.rewind(start + t + 1 + adv)
            self.stats.advanced.append(1 + adv)
            ticks.update(1 + adv)
            if t + 1 + adv >= steps:
                t = steps
                break
            # old window index i is step t+i: final up to acc+1, then Jacobi guesses, then fresh ones
            span = adv + L + 1
            fin = torch.cat([win[:, :n], torch.zeros(b, span - n, dtype=torch.long, device=out.device)], 1)  # (B, span)
            fin.scatter_(1, (acc + 1)[:, None], nxt[:, None])
            jac = self.guesses(pn, u[:, g + 1:g + 1 + m_out])  # (B, m_out): steps t+1 .. t+m_out
            extra = span - 1 - m_out  # guesses past the computed outputs
            new, new_q = self.fresh(pn[:, -1], extra, u[:, g + 1 + m_out:g + 1 + m_out + extra])
            cand = torch.cat([win[:, :1], jac, new], 1)  # (B, span)
            cand_q = torch.cat([q[:, :1], pn, new_q], 1)  # (B, span, V)
            idx = torch.arange(span, device=out.device)[None]  # (1, span)
            cand = torch.where(idx <= (acc + 1)[:, None], fin, cand)  # (B, span)
            keep = slice(1 + adv, 1 + adv + L)
            win, q = cand[:, keep].contiguous(), cand_q[:, keep].contiguous()  # (B, L), (B, L, V)
            known = acc - adv  # (B,)
            t += 1 + adv
        if t == steps - 1:  # the last code is final and needs no pass
            out[:, t] = win[:, 0]
            ticks.update(1)
        ticks.close()
        self.stats.codes = steps
        return out


def generate_sjd(model: TokenModel, cond: Condition | None = None, num: int | None = None,
                 config: SamplingConfig = SamplingConfig(decoder="sjd"), generator: Generators = None,
                 progress: bool = False, clusters: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                 stats: SJDStats | None = None) -> torch.Tensor:
    """Sample image codes (B, h, w) long by speculative Jacobi decoding (the ``sjd`` decoder);
    the arguments are those of :func:`vqgen.sampling.autoregressive.generate`. ``stats``, if
    given, receives the call's :class:`SJDStats` (forward passes, advance per pass)."""
    with _eval(model):
        plan = make_plan(model, cond, num, config, generator, clusters, guidance)
        loop = SJDLoop(model, plan, config, generator)
        codes = _codes(model, plan, loop.run(progress))
    if stats is not None:
        stats.passes, stats.codes, stats.advanced = loop.stats.passes, loop.stats.codes, loop.stats.advanced
    return codes
