"""A bounded worker pool for many independent requests.

``workers`` tasks pull row indices from one shared iterator, so a million queued
rows cost a million integers, not a million tasks; each outcome goes to a sink
the moment its row is done.

    await run_pool(len(rows), 64, send_row, keep)   # keep(i, result or exception)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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
            except Exception as exc:  # the sink decides what ends the call
                outcome = exc
            await sink(i, outcome)

    tasks = [asyncio.create_task(worker()) for _ in range(min(workers, n))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
