"""Continuous batching: one running decode loop that rows join and leave at any step.

    loop = ContinuousLoop(model, slots=8, config=settings)
    rows = loop.admit(cond, generator=[g0, g1], guidance=torch.tensor([3.0, 3.0]))  # row ids; prefilled now
    while loop.busy:
        for row, codes in loop.step():           # rows whose image is done leave the loop
            ...                                  # codes (*grid) long
    loop.release(rows)                           # rows that leave early (a cancelled request)

The cache is static: ``slots`` slots of one image row each (with guidance two cache rows per slot,
the conditional row of slot ``i`` at ``2i`` and its null row at ``2i + 1``), each row at its own
stream position (``cache.pos`` is (rows, 1), which the model families accept like the usual 0-d
position). A request joining the loop is prefilled in a cache of its own (:meth:`ContinuousLoop.prepare`,
which a server runs in another thread while the loop steps), and its keys, values and condition
memory are copied into the first free slots (:meth:`ContinuousLoop.join`); from the next
:meth:`ContinuousLoop.step` on it is picked and decoded with everyone else. When rows leave, the
last busy slots move into the freed ones (a copy of their cache rows and state), so the busy slots
are always the first ones and a step computes exactly the rows in the loop.

Randomness is the plan's (:func:`~vqgen.sampling.autoregressive.make_plan`): a request's
uniforms are drawn from its own generators when it joins, and its guidance schedule runs on the
row's own step index, so a row's codes depend on its generator, settings and condition only:
the same draws, processors and guidance formula as :func:`~vqgen.sampling.autoregressive.generate`.
Whether the codes match ``generate`` bit for bit depends on the logits matching, which is what the
tests check on CPU (the per-row attention mask runs the same kernels there); on GPU a kernel
chosen for another batch size may move a draw that sits on a CDF boundary, as for any batching.

Every row of a loop shares the settings' processors (temperature, top-k, top-p, clusters);
guidance goes per row. ``compile`` and ``cuda_graph`` are not used by the loop.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch

from vqgen.errors import VqgenError
from vqgen.sampling.autoregressive import Generators, Plan, make_plan
from vqgen.sampling.processors import greedy, sample_from
from vqgen.sampling.settings import SamplingConfig
from vqgen.transformer.base import Condition, KVCache, TokenModel


def _map(value, fn):
    """``fn`` applied to every tensor of a cache attribute (a tensor, or lists/tuples of them)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    return value


def _map2(big, small, fn) -> None:
    """``fn(b, s)`` on matching tensors of two cache attributes of the same structure."""
    if isinstance(big, torch.Tensor):
        fn(big, small)
    elif isinstance(big, (list, tuple)):
        for b, s in zip(big, small):
            _map2(b, s, fn)


class Prepared(NamedTuple):
    """A request prefilled for a loop (:meth:`ContinuousLoop.prepare`): its plan, its own cache and
    the logits (K', V) of its first codes."""

    plan: Plan
    cache: KVCache
    logits: torch.Tensor


class ContinuousLoop:
    """A decode loop with ``slots`` image rows that requests join and leave step by step (module doc).

    ``config``: the settings every row shares (their ``batch_key``; guidance goes per request).
    ``clusters``: the (V,) codebook clusters for ``config.cluster``.
    """

    def __init__(self, model: TokenModel, slots: int, config: SamplingConfig = SamplingConfig(),
                 clusters: torch.Tensor | None = None):
        if slots < 1:
            raise VqgenError(f"a continuous loop needs at least one slot, got {slots}")
        self.model, self.slots, self.config, self.clusters = model, slots, config, clusters
        self.device = next(model.parameters()).device
        self.per_slot = 2 if model.cond_kind != "none" else 1  # a null row per slot for guidance
        n, rows = model.image_seq_len, slots * self.per_slot
        self.cache: KVCache = model.new_cache(rows)
        self.cache.pos = torch.zeros(rows, 1, dtype=torch.long, device=self.device)  # (R, 1): a position per row
        self.logits = torch.zeros(rows, model.codebook_size, device=self.device)  # (R, V) for each row's next code
        self.u = torch.zeros(slots, n, device=self.device)  # (S, N) uniforms by the row's own step
        self.scale = torch.ones(slots, n, device=self.device)  # (S, N) guidance λ by step
        self.codes = torch.zeros(slots, n, dtype=torch.long, device=self.device)  # (S, N) prefix, then drawn codes
        self.first = torch.zeros(slots, dtype=torch.long, device=self.device)  # (S,) prefix length
        self.t = torch.zeros(slots, dtype=torch.long, device=self.device)  # (S,) codes drawn so far
        self.chain = config.processors(None if clusters is None else clusters.to(self.device))
        self.greedy = config.temperature == 0
        self.row_at: list[int] = []  # the row id in each busy slot: slots 0 .. busy-1
        self.left: list[int] = []  # codes each busy slot still draws
        self._next_id = 0
        self._views: dict[int, KVCache] = {}  # the cache cut to its first n slots, by n
        self.steps_run = 0

    @property
    def busy(self) -> int:
        """Busy slots (image rows in the loop)."""
        return len(self.row_at)

    @property
    def free(self) -> int:
        return self.slots - self.busy

    def _rows(self, slots: torch.Tensor) -> torch.Tensor:
        """Cache rows of ``slots`` (K,): the conditional rows, then (with guidance) the null rows."""
        if self.per_slot == 1:
            return slots
        return torch.cat([2 * slots, 2 * slots + 1])  # (2K,)

    # -- joining and leaving -----------------------------------------------------------------
    @torch.inference_mode()
    def admit(self, cond: Condition | None, num: int | None = None, generator: Generators = None,
              guidance: torch.Tensor | None = None) -> list[int]:
        """Prefill a request's rows (arguments as for ``generate``) into free slots; returns an id
        per row, in row order. They are drawn from at the next :meth:`step`."""
        return self.join(self.prepare(cond, num, generator, guidance))

    @torch.inference_mode()
    def prepare(self, cond: Condition | None, num: int | None = None, generator: Generators = None,
                guidance: torch.Tensor | None = None) -> Prepared:
        """The prefill half of :meth:`admit`: the request's plan, its own cache and first logits.
        It reads the loop's model and settings but none of its state, so another thread may run it
        while the loop steps; :meth:`join` then puts the rows into the loop."""
        plan = make_plan(self.model, cond, num, self.config, generator, self.clusters, guidance)
        conds = plan.cond if self.per_slot == 1 else Condition.cat(
            [plan.cond, plan.null if plan.null is not None else plan.cond.null()])
        own = self.model.new_cache(plan.batch * self.per_slot, max_len=self.cache.max_len)
        return Prepared(plan, own, self.model.prefill(conds, own))  # logits (K', V)

    @torch.inference_mode()
    def join(self, prepared: Prepared) -> list[int]:
        """A prepared request's rows into free slots (a copy of its cache rows); returns an id per row."""
        plan = prepared.plan
        if plan.batch > self.free:
            raise VqgenError(f"{plan.batch} rows do not fit in the {self.free} free slots of the loop")
        slots = torch.arange(self.busy, self.busy + plan.batch, device=self.device)  # (K,)
        rows = self._rows(slots)  # (K',)
        self._copy_rows(prepared.cache, rows)
        self.logits[rows] = prepared.logits
        k, s = plan.prefix.shape[1], plan.steps
        self.u[slots, :s] = plan.u
        self.scale[slots, :s] = 1.0 if plan.scale is None else plan.scale
        self.codes[slots, :k] = plan.prefix
        self.first[slots], self.t[slots] = k, 0
        ids = list(range(self._next_id, self._next_id + plan.batch))
        self._next_id += plan.batch
        self.row_at += ids
        self.left += [s] * plan.batch
        return ids

    def _copy_rows(self, own: KVCache, rows: torch.Tensor) -> None:
        """The request's cache (keys, values, condition memory, positions) into the loop's ``rows``."""
        self.cache.pos[rows] = own.pos.expand(rows.shape[0], 1)
        for name, value in vars(own).items():
            if name == "pos" or value is None:
                continue
            mine = getattr(self.cache, name)
            if mine is None:  # first request: condition memory for every row, copied from its first
                mine = _map(value, lambda t: t[:1].expand(self.cache.batch_size, *t.shape[1:]).clone())
                setattr(self.cache, name, mine)
                self._views.clear()
            _map2(mine, value, lambda b, s: b.index_copy_(0, rows, s))

    @torch.inference_mode()
    def release(self, ids: list[int]) -> None:
        """Rows that leave before their image is done (a cancelled request): their slots are free at once."""
        gone = set(ids)
        self._leave([i for i, row in enumerate(self.row_at) if row in gone])

    def _leave(self, slots: list[int], tok: torch.Tensor | None = None) -> None:
        """Free ``slots``, moving the last busy slots into them (and ``tok``'s entries with them)."""
        for slot in sorted(slots, reverse=True):
            last = self.busy - 1
            if slot != last:
                self._move(last, slot, tok)
            self.row_at.pop()
            self.left.pop()

    def _move(self, src: int, dst: int, tok: torch.Tensor | None) -> None:
        """Slot ``src``'s row (cache rows, draws, codes, state) into slot ``dst``."""
        s, d = self._rows(torch.tensor([src], device=self.device)), self._rows(torch.tensor([dst], device=self.device))
        for name, value in vars(self.cache).items():
            _map2(value, value, lambda t, _: t.index_copy_(0, d, t.index_select(0, s)))
        self.logits[d] = self.logits[s]
        for t in (self.u, self.scale, self.codes, self.first, self.t) + ((tok,) if tok is not None else ()):
            t[dst] = t[src]
        self.row_at[dst], self.left[dst] = self.row_at[src], self.left[src]

    # -- decoding ----------------------------------------------------------------------------
    def _view(self, slots: int) -> KVCache:
        """The loop's cache cut to its first ``slots`` slots (views: writes land in the loop's cache)."""
        view = self._views.get(slots)
        if view is None:
            rows = slots * self.per_slot
            view = copy.copy(self.cache)
            for name, value in vars(self.cache).items():
                setattr(view, name, _map(value, lambda t: t[:rows]))
            self._views[slots] = view
        return view

    @torch.inference_mode()
    def step(self) -> list[tuple[int, torch.Tensor]]:
        """Draw the next code of every row in the loop and feed them to the model. Returns ``(row
        id, codes (*grid))`` for each row whose image is now complete; its slot is free again."""
        n = self.busy
        if n == 0:
            return []
        t = self.t[:n]
        logits = self.logits[: n * self.per_slot]  # (R', V)
        if self.per_slot == 2:
            pair = logits.view(n, 2, -1)  # (n, 2, V): conditional, null
            logits = torch.lerp(pair[:, 1], pair[:, 0], self.scale[:n].gather(1, t[:, None]))  # (n, V)
        logits = self.chain(logits, None)  # (n, V)
        tok = greedy(logits) if self.greedy else sample_from(logits, self.u[:n].gather(1, t[:, None]).squeeze(1))  # (n,)
        self.codes[:n].scatter_(1, (self.first[:n] + t)[:, None], tok[:, None])
        t += 1
        self.left = [x - 1 for x in self.left]
        done = [i for i, x in enumerate(self.left) if x == 0]
        finished = [(self.row_at[i], self.codes[i].view(*self.model.grid).clone()) for i in done]
        self._leave(done, tok)
        self.steps_run += 1
        if self.busy:
            n = self.busy
            feed = tok[:n].repeat_interleave(self.per_slot)  # (R',): a slot's code for its null row too
            self.logits[: n * self.per_slot] = self.model.decode_step(feed, self._view(n))
        return finished
