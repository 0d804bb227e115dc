"""Cross-request batching: queued requests share one sampling loop (one pipeline call).

A :class:`Batcher` owns a bounded queue of :class:`Job` s and one background task. The task waits
for work, gathers compatible jobs (equal sampling settings but for guidance, which goes per row)
up to ``max_batch`` images or until ``window`` seconds have passed, flattens them into one prompt
list with one guidance value and one seeded ``torch.Generator`` per image, calls the pipeline once
in a worker thread, encodes the images as PNG there, and hands each job its own images back.
"""
from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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

    ``max_batch`` bounds the images per pipeline call (a single request larger than that runs
    alone); ``max_queue`` bounds the requests waiting; ``window`` is how long the first waiting
    request may wait for company while the pipeline is idle.
    """

    def __init__(self, pipe, max_batch: int = 8, max_queue: int = 64, window: float = 0.01):
        self.pipe = pipe
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.window = window
        self.device = getattr(pipe, "device", "cpu")
        self.stats = {
            "batches_run": 0, "requests_served": 0, "images_generated": 0,
            "max_batch_requests": 0, "max_batch_images": 0,
            "requests_rejected": 0, "requests_cancelled": 0, "requests_timed_out": 0, "requests_failed": 0,
        }
        self._pending: deque[Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running_images = 0

    # lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqgen-sampler")
        self._task = asyncio.create_task(self._loop(), name="vqgen-batcher")

    async def stop(self) -> None:
        """Stop taking work, fail the waiting requests, and wait for the running batch to end."""
        task, self._task = self._task, None
        while self._pending:
            job = self._pending.popleft()
            if not job.result.done():
                job.result.set_exception(NotRunning("the server is shutting down"))
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

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
        self._pending.append(job)
        self._wakeup.set()
        return job.result

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """Drop ``job`` (``reason``: ``cancelled`` or ``timed_out``, the counter it goes to).

        A waiting job leaves the queue; a job already in a running batch finishes unseen (the
        pipeline call cannot be interrupted part-way).
        """
        if job in self._pending:
            self._pending.remove(job)
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
            deadline = self._pending[0].enqueued_at + self.window
            while self._compatible_images() < self.max_batch and time.monotonic() < deadline:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), deadline - time.monotonic())
                except TimeoutError:
                    break
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
