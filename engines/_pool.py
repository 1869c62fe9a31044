"""A bounded worker pool for many independent requests, with results as they finish.

``workers`` tasks pull row indices from one shared iterator, so a million queued
rows cost a million integers, not a million tasks; results go to a sink (or a
small queue, for iteration) the moment each row is done.

    async for i, outcome in iter_pool(len(rows), 64, send_row):
        ...  # outcome: send_row(i)'s result, or the exception that ended row i
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

Job = Callable[[int], Awaitable[Any]]
Sink = Callable[[int, Any], Awaitable[None]]


async def run_pool(n: int, workers: int, job: Job, sink: Sink) -> None:
    """Run ``job(i)`` for every ``i < n``, ``workers`` at a time; hand ``sink`` each outcome.

    An outcome is the job's result or the exception it raised. If ``sink``
    raises, the other workers are cancelled and the error propagates.
    """
    indices = iter(range(n))

    async def worker() -> None:
        for i in indices:
            try:
                outcome: Any = await job(i)
            except Exception as exc:  # noqa: BLE001 - the sink decides what ends the call
                outcome = exc
            await sink(i, outcome)

    tasks = [asyncio.create_task(worker()) for _ in range(min(workers, n))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def iter_pool(n: int, workers: int, job: Job) -> AsyncIterator[tuple[int, Any]]:
    """``(i, outcome)`` in completion order, through a queue of ``workers`` slots.

    A slow consumer holds the workers back (bounded memory); closing the
    iterator early cancels whatever is still in flight.
    """
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(workers)

    async def put(i: int, outcome: Any) -> None:
        await queue.put((i, outcome))

    async def run() -> None:
        try:
            await run_pool(n, workers, job, put)
        except BaseException as exc:  # surfaced to the consumer below, never lost
            await queue.put((-1, _PoolFailed(exc)))
            raise

    pool = asyncio.create_task(run())
    try:
        for _ in range(n):
            i, outcome = await queue.get()
            if isinstance(outcome, _PoolFailed):
                raise outcome.error
            yield i, outcome
        # every row is out: let the workers end on their own. Cancelling them here would
        # tie every request's data into a traceback cycle that only a full GC frees.
        await pool
    finally:
        if not pool.done():
            pool.cancel()
            await asyncio.gather(pool, return_exceptions=True)


class _PoolFailed:
    def __init__(self, error: BaseException) -> None:
        self.error = error
