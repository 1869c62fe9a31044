"""A bounded worker pool for many independent requests.

``workers`` tasks pull row indices from one shared iterator, so a million queued
rows cost a million integers, not a million tasks.

    await run_pool(len(rows), 64, send_row)   # send_row(i) for every row
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def run_pool(n: int, workers: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run ``job(i)`` for every ``i < n``, ``workers`` at a time.

    If a job raises, the other workers are cancelled and the error propagates.
    """
    indices = iter(range(n))

    async def worker() -> None:
        for i in indices:
            await job(i)

    tasks = [asyncio.create_task(worker()) for _ in range(min(workers, n))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
