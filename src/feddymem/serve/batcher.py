"""Micro-batching: requests that arrive together are scored as one batch, off the event loop.

A single worker task takes the first waiting image, then whatever else arrives within
`max_wait_ms` (up to `max_batch`), and runs `score_batch` on one dedicated scoring thread, on
the model serving when the batch starts. While a batch is scored, new requests queue up and
form the next batch, so under load batches fill without waiting; a lone request waits at most
`max_wait_ms`. The queue is bounded (`max_queue`): past it, `submit` waits, which bounds the
memory held by queued images.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from feddymem.serve.models import ModelHolder
from feddymem.serve.scoring import Scored, score_batch

log = logging.getLogger(__name__)


@dataclass
class _Job:
    image: np.ndarray
    want_map: bool
    done: asyncio.Future[Scored]


class MicroBatcher:
    """Collects `submit`ted images into batches for the holder's current model."""

    def __init__(
        self,
        holder: ModelHolder,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 2.0,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.holder = holder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray, *, want_map: bool = False) -> Scored:
        """Score one (h, w, 3) uint8 image with the next batch; returns its result."""
        done: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(image=image, want_map=want_map, done=done))
        return await done

    async def _collect(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), timeout=left))
            except TimeoutError:
                break
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            model = self.holder.current  # the whole batch is scored on this one model
            try:
                results = await loop.run_in_executor(
                    self._executor,
                    functools.partial(
                        score_batch,
                        model,
                        [j.image for j in jobs],
                        want_maps=[j.want_map for j in jobs],
                    ),
                )
            except Exception as err:
                log.exception("a batch of %d image(s) failed", len(jobs))
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(len(jobs))
            for job, result in zip(jobs, results, strict=True):
                if not job.done.done():  # the client may have gone
                    job.done.set_result(result)
