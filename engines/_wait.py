"""Time a request spends waiting on backends (an upstream server's answer, a local model's
forward pass), summed per request: the gateway takes it from its own time to report its
overhead (``x-inferline-overhead-ms``). Nothing is counted outside a ``start()``.

    box = start()              # in the request's task; tasks it creates share the box
    add(0.05)                  # a backend answered after 50 ms
    box[0]                     # 0.05
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")
_WAIT: ContextVar[list[float] | None] = ContextVar("inferline_backend_wait", default=None)


def start() -> list[float]:
    """A fresh total for this context (and the tasks it starts)."""
    box = [0.0]
    _WAIT.set(box)
    return box


def add(seconds: float) -> None:
    if (box := _WAIT.get()) is not None:
        box[0] += seconds


async def timed(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """``items``, counting the time spent waiting for each one."""
    while True:
        began = time.perf_counter()
        try:
            item = await anext(items)
        except StopAsyncIteration:
            return
        finally:
            add(time.perf_counter() - began)
        yield item
