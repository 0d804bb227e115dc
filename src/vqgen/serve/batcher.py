"""Cross-request batching: queued requests share one sampling loop.

A :class:`Batcher` owns a bounded queue of :class:`Job` s and one background task that drives a
worker thread. Two ways to share the loop:

* **continuous** (the default, for the ``autoregressive`` decoder of a pipeline with a token
  transformer): one running decode loop (:class:`~vqgen.sampling.continuous.ContinuousLoop`) with a
  slot per image row, driven step after step by the worker thread. Before every decode step the
  thread admits the waiting jobs that fit in the free slots (in arrival order, same sampling
  settings but for guidance). Helper threads keep per-request work off the loop:
  it prefills the admitted jobs (their rows join at the first step after) and turns the codes of
  finished jobs into PNGs for the event loop, while the loop goes on stepping the others. A job
  whose client went away frees its slots at the next step. The queue is shared under a lock, so
  the event loop never waits for a step, nor a step for the event loop. The loop ends when it is
  empty; a job with other settings waits at the head of the queue until then (no job overtakes
  it), and one with more rows than slots runs alone as below.
* **request batching** (``continuous=False``, other decoders, pipelines without a transformer):
  the task gathers compatible jobs up to ``max_batch`` images, flattens them into one prompt list
  with one guidance value and one seeded ``torch.Generator`` per image, calls the pipeline once,
  and hands each job its own images; later jobs wait for the whole call to finish.

When the sampler is idle the first job of a request batch waits up to ``window`` seconds for
company; the first job of a continuous loop starts at once (later ones join at any step).
"""
from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from vqgen.sampling.autoregressive import image_generators
from vqgen.sampling.settings import SamplingConfig

log = logging.getLogger("vqgen.serve")


class QueueFull(Exception):
    """The bounded queue has no room for another request."""


class NotRunning(Exception):
    """The batcher is stopped (starting up or shutting down)."""


@dataclass(eq=False)
class Job:
    """One request: ``n`` images of ``prompt`` with ``settings`` (the pipeline's defaults merged
    with the request's, checked); ``result`` receives a list of ``n`` PNG byte strings."""

    prompt: str
    n: int
    seed: int
    settings: SamplingConfig
    super_resolution: bool = False
    result: asyncio.Future = field(default=None, repr=False)  # set by Batcher.submit
    enqueued_at: float = 0.0
    # in a continuous loop (set by the worker thread when the job joins)
    row_ids: list[int] | None = field(default=None, repr=False)  # the loop's ids of its rows, in row order
    label: str = ""  # the prompt as the pipeline takes it (validate_prompt)
    cond: Any = field(default=None, repr=False)  # its rows' Condition
    generators: list | None = field(default=None, repr=False)  # one per image

    @property
    def rows(self) -> int:
        """Rows this job adds to a sampling loop (its images times the rerank candidates)."""
        return self.n * self.settings.rerank

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys share one pipeline call."""
        return self.settings.batch_key, self.super_resolution


def encode_png(image) -> bytes:
    """A PIL image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Batcher:
    """Queue requests and serve them in batches through one pipeline.

    ``max_batch`` bounds the image rows sampled together (the slots of a continuous loop; a single
    request larger than that runs alone); ``max_queue`` bounds the requests waiting; ``window`` is
    how long the first waiting request may wait for company while the sampler is idle;
    ``continuous``: requests join the running decode loop step by step (module doc).
    """

    def __init__(self, pipe, max_batch: int = 32, max_queue: int = 64, window: float = 0.01,
                 continuous: bool = True):
        self.pipe = pipe
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.window = window
        self.continuous = continuous
        self.device = getattr(pipe, "device", "cpu")
        self.stats = {
            "batches_run": 0, "requests_served": 0, "images_generated": 0,
            "max_batch_requests": 0, "max_batch_images": 0, "steps_run": 0, "requests_joined_running": 0,
            "requests_rejected": 0, "requests_cancelled": 0, "requests_timed_out": 0, "requests_failed": 0,
        }
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []  # jobs in the continuous loop
        self._leaving: list[Job] = []  # cancelled jobs whose slots the next step frees
        self._lock = threading.Lock()  # the queue, the loop's jobs and counters, shared with the worker thread
        self._stopping = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._helper: ThreadPoolExecutor | None = None  # prefills a loop's joining jobs, makes its finished ones' PNGs
        self._ready: list[tuple[Job, Any]] = []  # jobs prefilled by the helper (or their error), to join the loop
        self._prepared = threading.Event()  # set when the helper adds to ``_ready``
        self._running_images = 0

    # lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqgen-sampler")
        self._helper = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vqgen-helper")  # a slow prefill does not hold up PNGs
        self._task = asyncio.create_task(self._loop(), name="vqgen-batcher")

    async def stop(self) -> None:
        """Stop taking work, fail the waiting requests, and wait for the running batch to end."""
        task, self._task = self._task, None
        self._stopping = True  # a running loop's worker returns after its current step
        with self._lock:
            waiting, self._pending = list(self._pending), deque()
        for job in waiting:
            if not job.result.done():
                job.result.set_exception(NotRunning("the server is shutting down"))
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for pool in (self._executor, self._helper):
            if pool is not None:
                pool.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # requests --------------------------------------------------------------------------------
    def submit(self, job: Job) -> asyncio.Future:
        """Queue ``job``; raises :class:`QueueFull` or :class:`NotRunning` instead of waiting."""
        if not self.running:
            raise NotRunning("the server is not accepting requests (starting up or shutting down)")
        if len(self._pending) >= self.max_queue:
            self.stats["requests_rejected"] += 1
            raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry later")
        job.result = asyncio.get_running_loop().create_future()
        job.enqueued_at = time.monotonic()
        with self._lock:
            self._pending.append(job)
        self._wakeup.set()
        return job.result

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """Drop ``job`` (``reason``: ``cancelled`` or ``timed_out``, the counter it goes to).

        A waiting job leaves the queue; a job in the continuous loop leaves it at the next step,
        freeing its slots; a job in a request batch finishes unseen (a pipeline call cannot be
        interrupted part-way).
        """
        with self._lock:
            if job in self._pending:
                self._pending.remove(job)
            elif job in self._running:
                self._running.remove(job)
                self._leaving.append(job)
        if not job.result.done():
            job.result.cancel()
            self.stats[f"requests_{reason}"] += 1

    def metrics(self) -> dict:
        """Counters plus the current queue depth."""
        return {**self.stats, "queue_depth": len(self._pending), "running_images": self._running_images,
                "max_batch": self.max_batch, "max_queue": self.max_queue}

    # batching --------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # a continuous loop takes later requests at any step, so its first one does not wait for company
            wait = 0.0 if self._joins_loop(self._pending[0]) else self.window
            deadline = self._pending[0].enqueued_at + wait
            while self._pending and self._compatible_images() < self.max_batch and time.monotonic() < deadline:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), deadline - time.monotonic())
                except TimeoutError:
                    break
            while self._pending and self._pending[0].result.done():  # cancelled or timed out while waiting
                self._pending.popleft()
            if not self._pending:
                continue
            if self._joins_loop(self._pending[0]):
                await self._run_continuous()
                continue
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    def _compatible_images(self) -> int:
        key = self._pending[0].batch_key
        return sum(j.rows for j in self._pending if j.batch_key == key)

    def _take_batch(self) -> list[Job]:
        """The oldest job plus later jobs with its settings, FIFO, while their rows fit in ``max_batch``."""
        key = self._pending[0].batch_key
        batch, rows = [], 0
        for job in list(self._pending):
            if job.batch_key != key or (batch and rows + job.rows > self.max_batch):
                continue
            self._pending.remove(job)
            if job.result.done():  # cancelled or timed out while waiting
                continue
            batch.append(job)
            rows += job.rows
        return batch

    async def _run(self, batch: list[Job]) -> None:
        images = sum(j.rows for j in batch)
        self._running_images = images
        self.stats["batches_run"] += 1
        self.stats["max_batch_requests"] = max(self.stats["max_batch_requests"], len(batch))
        self.stats["max_batch_images"] = max(self.stats["max_batch_images"], images)
        log.info("batch %d: %d requests, %d images", self.stats["batches_run"], len(batch), images)
        loop = asyncio.get_running_loop()
        try:
            pngs = await loop.run_in_executor(self._executor, self._sample, batch)
        except Exception as e:  # the pipeline failed: every job in the batch gets the error
            log.exception("batch %d failed", self.stats["batches_run"])
            self.stats["requests_failed"] += len(batch)
            for job in batch:
                if not job.result.done():
                    job.result.set_exception(e)
            return
        finally:
            self._running_images = 0
        start = 0
        for job in batch:
            if not job.result.done():
                job.result.set_result(pngs[start:start + job.n])
                self.stats["requests_served"] += 1
            start += job.n
        self.stats["images_generated"] += images

    def _sample(self, batch: list[Job]) -> list[bytes]:
        """Worker thread: one pipeline call for the whole batch, then PNG encoding."""
        prompts, guidance, generators = [], [], []
        for job in batch:
            prompts += [job.prompt] * job.n
            guidance += [job.settings.guidance_scale] * job.n
            generators += image_generators(job.seed, job.n, self.device)
        first = batch[0]
        with torch.inference_mode():
            out = self.pipe(prompts, num_images=1, settings=first.settings, guidance_scale=guidance,
                            super_resolution=first.super_resolution, generator=generators, output_type="pil")
        return [encode_png(im) for im in out.images]

    # continuous batching ------------------------------------------------------------------------
    def _joins_loop(self, job: Job) -> bool:
        """Whether ``job`` runs in a continuous loop (else in a request batch): the ``autoregressive``
        decoder of a token transformer, in a pipeline whose call is the shared one (the loop does the
        same stages: ``_prepare``, ``_finish``)."""
        from vqgen.pipelines.base import Pipeline
        from vqgen.transformer.base import TokenModel

        return (self.continuous and job.settings.decoder == "autoregressive" and job.rows <= self.max_batch
                and isinstance(getattr(self.pipe, "transformer", None), TokenModel)
                and type(self.pipe).__call__ is Pipeline.__call__)

    def _admissions(self, key) -> list[Job]:
        """Waiting jobs that join the loop now: from the head of the queue, in order, while they have
        the loop's settings and fit in its free slots (a job that does not stops the admissions)."""
        rows = sum(j.rows for j in self._running)
        admit = []
        while self._pending:
            job = self._pending[0]
            if job.result.done():  # cancelled or timed out while waiting
                self._pending.popleft()
                continue
            if job.batch_key != key or not self._joins_loop(job) or rows + job.rows > self.max_batch:
                break
            admit.append(self._pending.popleft())
            rows += job.rows
        return admit

    async def _run_continuous(self) -> None:
        """One continuous loop, from its first request until it is empty (driven by :meth:`_drive`)."""
        from vqgen.sampling.continuous import ContinuousLoop

        loop = asyncio.get_running_loop()
        head = self._pending[0]
        engine = await loop.run_in_executor(self._executor, ContinuousLoop, self.pipe.transformer, self.max_batch,
                                            head.settings, self.pipe.clusters)
        self.stats["batches_run"] += 1
        try:
            await loop.run_in_executor(self._executor, self._drive, engine, head.batch_key, loop,
                                       self.stats["batches_run"])
        except Exception as e:  # the loop itself failed: every job in it gets the error
            log.exception("loop %d failed", self.stats["batches_run"])
            with self._lock:
                jobs, self._running = self._running, []
            self._deliver([(job, e) for job in jobs], [])
        except asyncio.CancelledError:  # the server is stopping
            with self._lock:
                jobs, self._running = self._running, []
            self._deliver([(job, NotRunning("the server is shutting down")) for job in jobs], [])
            raise
        finally:
            self._running_images = 0
            self._leaving = []

    def _deliver(self, failed: list, finished: list) -> None:
        """Event loop: answer the jobs that failed and those whose images are done."""
        for job, error in failed:
            if not job.result.done():
                job.result.set_exception(error)
                self.stats["requests_failed"] += 1
        for job, pngs in finished:
            self.stats["images_generated"] += job.rows
            if not job.result.done():
                job.result.set_result(pngs)
                self.stats["requests_served"] += 1

    def _drive(self, engine, key, loop: asyncio.AbstractEventLoop, number: int) -> None:
        """Worker thread: step after step, free the slots of jobs that left, take in the joining ones
        (prefilled by a helper thread while the loop steps, or here when the loop has nothing else
        to do), run a decode step, and give the finished jobs to a helper to make their PNGs;
        return when the loop is empty (or the server stops)."""
        with self._lock:
            self._ready = []
        while not self._stopping:
            with self._lock:
                admit = self._admissions(key)
                leaving, self._leaving = self._leaving, []
                ready = [(job, p) for job, p in self._ready if job in self._running]  # not cancelled meanwhile
                self._ready = []
                if not self._running and not admit:
                    return
                self._running += admit
                running = list(self._running)
                rows = sum(j.rows for j in running)
                self._running_images = rows
                self.stats["max_batch_requests"] = max(self.stats["max_batch_requests"], len(running))
                self.stats["max_batch_images"] = max(self.stats["max_batch_images"], rows)
                self.stats["requests_joined_running"] += len(admit) if engine.busy else 0
            if admit:
                log.info("loop %d: %d requests join (%d rows)%s", number, len(admit), sum(j.rows for j in admit),
                         " at a running step" if engine.busy else "")
            with torch.inference_mode():
                for job in leaving:
                    if job.row_ids is not None:
                        engine.release(job.row_ids)
                if engine.busy:  # their prefill would hold up the rows in the loop: the helper does it
                    for job in admit:
                        self._helper.submit(self._prepare_for, engine, job)
                else:
                    ready += [(job, self._prepare(engine, job)) for job in admit]
                failed, finished = self._advance(engine, ready, running)
            if failed or finished:
                with self._lock:
                    for job, _ in failed + finished:
                        if job in self._running:
                            self._running.remove(job)
            if failed:
                loop.call_soon_threadsafe(self._deliver, failed, [])
            for job, codes in finished:  # their images are made while the loop goes on
                self._helper.submit(self._finish_and_deliver, job, codes, loop)
            if not engine.busy and not self._ready:  # every job in the loop is being prefilled
                self._prepared.wait(0.05)
                self._prepared.clear()

    def _advance(self, engine, ready: list, running: list[Job]):
        """Join the prepared jobs and run one decode step. Returns (failed jobs with their error,
        finished jobs with their codes (rows, *grid))."""
        failed, finished = [], []
        for job, prepared in ready:
            if isinstance(prepared, Exception):  # this request only (its prompt, its settings)
                failed.append((job, prepared))
                continue
            try:
                job.row_ids = engine.join(prepared)
            except Exception as e:  # this request only
                log.exception("a request could not join the loop")
                failed.append((job, e))
        if not engine.busy:
            return failed, finished
        done = dict(engine.step())
        self.stats["steps_run"] += 1
        for job in running:
            if job.row_ids is not None and all(r in done for r in job.row_ids):
                finished.append((job, torch.stack([done[r] for r in job.row_ids])))  # (rows, *grid)
        return failed, finished

    def _prepare(self, engine, job: Job):
        """``job``'s prompt conditioned and its rows prefilled (``ContinuousLoop.prepare``), as the
        pipeline would condition and seed them; or the error that this request fails with."""
        try:
            job.label = self.pipe.validate_prompt(job.prompt)
            job.cond = self.pipe.condition([job.label] * job.rows, self.device)
            job.generators = image_generators(job.seed, job.n, self.device)
            k = job.settings.rerank
            return engine.prepare(job.cond, generator=[g for g in job.generators for _ in range(k)],
                                  guidance=job.settings.row_guidance(None, job.rows, 1))
        except Exception as e:
            log.exception("a request could not join the loop")
            return e

    def _prepare_for(self, engine, job: Job) -> None:
        """Helper thread: :meth:`_prepare`, handed to the loop at its next step."""
        with torch.inference_mode():
            prepared = self._prepare(engine, job)
        with self._lock:
            self._ready.append((job, prepared))
        self._prepared.set()

    def _finish_and_deliver(self, job: Job, codes: torch.Tensor, loop: asyncio.AbstractEventLoop) -> None:
        """Helper thread: a finished job's PNGs (or its error), handed to the event loop. Runs beside
        the decode loop, so a job's tokenizer decode, reranking and PNG encoding never hold up a step."""
        try:
            with torch.inference_mode():
                result = [], [(job, self._finish(job, codes))]
        except Exception as e:
            log.exception("the images of a request could not be made")
            result = [(job, e)], []
        loop.call_soon_threadsafe(self._deliver, *result)

    def _finish(self, job: Job, codes: torch.Tensor) -> list[bytes]:
        """Codes (rows, *grid) → the job's PNGs: the pipeline's tokenizer, reranker and upsampler."""
        from vqgen.pipelines.base import to_output_images

        images = self.pipe.decode(codes, job.cond)  # (R, 3, H, W)
        k = job.settings.rerank
        if k > 1:
            scores = self.pipe.rerank_scores(images, codes, [job.label] * job.rows).view(job.n, k)  # (n, k)
            pick = torch.arange(job.n, device=scores.device) * k + scores.argmax(1)  # (n,)
            images = images[pick.to(images.device)]
        if job.super_resolution:
            images = self.pipe.upsample_stage(images, [job.label] * job.n, job.generators)  # (n, 3, H*s, W*s)
        return [encode_png(im) for im in to_output_images(images, "pil")]
