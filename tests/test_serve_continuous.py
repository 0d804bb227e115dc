"""Continuous batching: rows join and leave the running decode loop; seeds give the same images."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from vqgen.sampling import SamplingConfig, generate, image_generators
from vqgen.sampling.continuous import ContinuousLoop
from vqgen.transformer.base import Condition

httpx = pytest.importorskip("httpx", reason="the serve tests need httpx")
pytest.importorskip("fastapi", reason="vqgen serve needs fastapi (the 'serve' extra)")

from tests.test_serve import metrics, post_in_thread, running_server, wait_until  # noqa: E402
from tests.tiny import tiny_components, tiny_pipeline  # noqa: E402
from vqgen.serve.app import ServeConfig, create_app  # noqa: E402


def conditions(family: str, model, count: int) -> list[Condition]:
    if family == "vim":
        return [Condition(class_ids=torch.tensor([i % 3, (i + 1) % 3])) for i in range(count)]
    return [model.text_condition(["a red circle", f"{i} blue squares"]) for i in range(count)]


@pytest.mark.parametrize("family", ["parti", "vim", "unified"])
def test_rows_joining_at_any_step_get_the_codes_of_their_own_call(family):
    """Requests join a running loop at steps 0, 3, 5 and (after the first left) 40; a fifth is
    released half-way. Every row's codes equal ``generate`` for that request alone, bit for bit."""
    model = tiny_components(family, num_classes=3 if family == "vim" else 0)["transformer"]
    config = SamplingConfig(guidance_scale=3.0, top_k=20)
    conds = conditions(family, model, 5)
    guidance = [torch.tensor([3.0, 1.0 + i]) for i in range(5)]
    alone = [generate(model, c, config=config, generator=image_generators(i, 2), guidance=g)
             for i, (c, g) in enumerate(zip(conds, guidance))]
    loop = ContinuousLoop(model, slots=7, config=config)
    joins, owner, got, step = {0: 0, 1: 3, 4: 4, 2: 5, 3: 40}, {}, {}, 0
    while joins or loop.busy:
        for i, at in sorted(joins.items()):
            if at <= step and loop.free >= 2:
                for row, rid in enumerate(loop.admit(conds[i], generator=image_generators(i, 2), guidance=guidance[i])):
                    owner[rid] = (i, row)
                del joins[i]
        if step == 9:  # request 4 leaves (its client went away); its slots are reused, rows move
            loop.release([r for r, (i, _) in owner.items() if i == 4])
        assert loop.busy == sum(1 for i, _ in owner.values() if i != 4 or step < 9)
        for rid, codes in loop.step():
            got[owner.pop(rid)] = codes
        step += 1
    assert sorted(got) == [(i, r) for i in (0, 1, 2, 3) for r in (0, 1)]
    for (i, row), codes in got.items():
        assert torch.equal(codes, alone[i][row]), (i, row)


def test_a_loop_without_guidance_and_a_full_loop():
    model = tiny_components("vim")["transformer"]  # unconditional: one row per slot
    loop = ContinuousLoop(model, slots=2, config=SamplingConfig(temperature=0.7))
    assert loop.per_slot == 1 and loop.busy == 0
    loop.admit(None, num=2, generator=image_generators(1, 2))
    with pytest.raises(Exception, match="do not fit"):
        loop.admit(None, num=1, generator=image_generators(2, 1))
    out = []
    while loop.busy:
        out += loop.step()
    expect = generate(model, None, num=2, config=SamplingConfig(temperature=0.7), generator=image_generators(1, 2))
    assert torch.equal(torch.stack([c for _, c in sorted(out)]), expect)


# the server -------------------------------------------------------------------------------------
class StepGate:
    """Holds the decode loop before each of its steps until the test lets it run on (``go``) or
    lets one step through (:meth:`one_step`)."""

    def __init__(self, model):
        self.model, self.step = model, model.decode_step
        self.go, self.waiting, self._one = threading.Event(), threading.Event(), threading.Event()
        model.decode_step = self

    def __call__(self, tokens, cache):
        self.waiting.set()
        deadline = time.monotonic() + 10
        while not self.go.is_set():
            if self._one.wait(0.005):
                self._one.clear()
                break
            assert time.monotonic() < deadline
        return self.step(tokens, cache)

    def one_step(self):
        """Let the held step run and wait until the loop is held before its next step."""
        self.waiting.clear()
        self._one.set()
        assert self.waiting.wait(10)

    def close(self):
        del self.model.decode_step
        self.go.set()


@pytest.mark.parametrize("continuous", [True, False])
def test_a_request_arriving_mid_decode_joins_the_running_loop(continuous):
    pipe = tiny_pipeline(sampling=SamplingConfig(guidance_scale=3.0))
    gate = StepGate(pipe.transformer)
    app = create_app(pipe, ServeConfig(max_batch=4, batch_window=0, continuous=continuous))
    try:
        with running_server(app) as base:
            url, results = f"{base}/v1/images/generations", []
            first = post_in_thread(url, {"prompt": "first", "seed": 1}, results)
            assert gate.waiting.wait(10)  # the first request is decoding (held before a step)
            second = post_in_thread(url, {"prompt": "second", "seed": 2}, results)
            wait_until(lambda: metrics(base)["queue_depth"] == 1)
            gate.go.set()
            first.join()
            second.join()
            assert [r.status_code for r in results] == [200, 200]
            m = metrics(base)
            if continuous:  # one loop: the second joined (prefilled by the helper) while the first had steps to go
                assert m["batches_run"] == 1 and m["requests_joined_running"] == 1
                assert m["max_batch_requests"] == 2 and 17 <= m["steps_run"] < 32  # overlapped: fewer than 16 + 16
            else:  # the second waited for the first batch to end
                assert m["batches_run"] == 2 and m["max_batch_requests"] == 1
    finally:
        gate.close()


def test_a_departed_client_frees_its_slot_and_no_request_is_lost():
    """Two slots: A decodes, B joins it, C waits. B's client gives up: its slot goes to C at the
    next step, inside the same loop (before A is done); A and C are answered."""
    pipe = tiny_pipeline(sampling=SamplingConfig(guidance_scale=3.0))
    gate = StepGate(pipe.transformer)
    app = create_app(pipe, ServeConfig(max_batch=2, batch_window=1.0))  # the window is for request batching
    try:
        with running_server(app) as base:
            url, results = f"{base}/v1/images/generations", []
            a = post_in_thread(url, {"prompt": "a", "seed": 1}, results)
            assert gate.waiting.wait(10)  # A's loop started at once and is held before a step
            b_results = []
            b = post_in_thread(url, {"prompt": "b", "seed": 2}, b_results, timeout=0.5)  # gives up
            wait_until(lambda: metrics(base)["queue_depth"] == 1)
            gate.one_step()  # B joins at the next step and is held there with A
            assert metrics(base)["queue_depth"] == 0
            c = post_in_thread(url, {"prompt": "c", "seed": 3}, results)
            wait_until(lambda: metrics(base)["queue_depth"] == 1)  # no free slot for C yet
            b.join()
            assert isinstance(b_results[0], httpx.ReadTimeout)
            wait_until(lambda: metrics(base)["requests_cancelled"] == 1)
            gate.go.set()
            a.join()
            c.join()
            assert [r.status_code for r in results] == [200, 200]
            m = metrics(base)
            assert m["batches_run"] == 1 and m["requests_joined_running"] == 2  # B, then C in B's slot, mid-loop
            assert m["requests_served"] == 2 and m["requests_failed"] == 0 and m["queue_depth"] == 0
    finally:
        gate.close()


def test_a_continuous_loop_starts_at_once_and_finished_images_do_not_hold_it_up():
    """The first request of a loop does not wait for the batching window (60 s here; later requests
    join at any step). A finished request's images are made by the finisher thread: while its
    decode is held, the next request's codes are all drawn, and both are answered."""
    pipe = tiny_pipeline(sampling=SamplingConfig(guidance_scale=3.0))
    decode, held, release = pipe.decode, threading.Event(), threading.Event()

    def slow_decode(codes, cond):
        if not held.is_set():  # the first request's images only
            held.set()
            assert release.wait(20)
        return decode(codes, cond)

    pipe.decode = slow_decode
    app = create_app(pipe, ServeConfig(max_batch=4, batch_window=60.0))
    with running_server(app) as base:
        url, results = f"{base}/v1/images/generations", []
        a = post_in_thread(url, {"prompt": "a", "seed": 1}, results, timeout=30)
        assert held.wait(20)  # A's codes are done well inside the window; its decode is held
        steps = metrics(base)["steps_run"]
        b = post_in_thread(url, {"prompt": "b", "seed": 2}, results, timeout=30)
        wait_until(lambda: metrics(base)["steps_run"] >= steps + pipe.transformer.image_seq_len)
        release.set()
        a.join()
        b.join()
        assert [getattr(r, "status_code", r) for r in results] == [200, 200]
        assert metrics(base)["requests_served"] == 2


def test_a_joining_request_is_prefilled_beside_the_running_loop():
    """While the loop runs, a joining request is conditioned and prefilled by the helper thread:
    with its conditioning held, the request already in the loop draws all its codes and is
    answered; then the held one joins and is answered too."""
    pipe = tiny_pipeline(sampling=SamplingConfig(guidance_scale=3.0))
    gate = StepGate(pipe.transformer)
    condition, held, release = pipe.condition, threading.Event(), threading.Event()

    def slow_condition(prompts, device):
        if prompts[0] == "b":
            held.set()
            assert release.wait(20)
        return condition(prompts, device)

    pipe.condition = slow_condition
    app = create_app(pipe, ServeConfig(max_batch=4))
    try:
        with running_server(app) as base:
            url, first, second = f"{base}/v1/images/generations", [], []
            a = post_in_thread(url, {"prompt": "a", "seed": 1}, first, timeout=30)
            assert gate.waiting.wait(10)  # A is in the loop, held before a step
            b = post_in_thread(url, {"prompt": "b", "seed": 2}, second, timeout=30)
            wait_until(lambda: metrics(base)["queue_depth"] == 1)
            gate.one_step()
            assert held.wait(10)  # B is being prefilled beside the loop
            gate.go.set()
            a.join()  # A finishes while B's conditioning is still held
            assert first[0].status_code == 200 and b.is_alive()
            release.set()
            b.join()
            assert second[0].status_code == 200 and metrics(base)["batches_run"] == 1
    finally:
        release.set()
        gate.close()


@pytest.mark.parametrize("extras", [{}, {"rerank": 3, "size": "32x32"}])
def test_seeded_images_equal_the_request_batching_path(extras):
    """Same seed and settings → the same PNG bytes from continuous batching (joined alongside other
    requests) as from today's request batching, also through the reranker and the upsampler."""
    pipe = tiny_pipeline(reranker="clip" if extras else None, upsampler=bool(extras),
                         sampling=SamplingConfig(guidance_scale=3.0))
    body = {"prompt": "a green triangle", "n": 2, "seed": 11, "guidance_scale": 2.0, **extras}
    answers = {}
    for continuous in (True, False):
        app = create_app(pipe, ServeConfig(max_batch=8, batch_window=0.2, continuous=continuous))
        with running_server(app) as base:
            url, results = f"{base}/v1/images/generations", []
            threads = [post_in_thread(url, {"prompt": "a red circle", "n": 1, **extras}, results),
                       post_in_thread(url, body, results)]
            for t in threads:
                t.join()
            assert [r.status_code for r in results] == [200, 200]
            answers[continuous] = next(r.json()["data"] for r in results if b'"seed"' in r.request.content)
    assert answers[True] == answers[False]


def test_serve_batching_option():
    from vqgen.cli import build_parser

    assert build_parser().parse_args(["serve"]).batching == "continuous" and ServeConfig().continuous
    assert build_parser().parse_args(["serve", "--batching", "request"]).batching == "request"
