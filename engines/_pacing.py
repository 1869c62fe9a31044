"""How hard a remote engine pushes: request/token rate limits and retry back-off.

    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=None)
    await limiter.acquire(estimated_tokens=300)   # waits until a slot is free
    limiter.settle(estimated_tokens=300, used_tokens=270)
    await asyncio.sleep(backoff_delay(attempt=2, base=1.0, cap=30.0, retry_after=None))
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time


def backoff_delay(attempt: int, *, base: float, cap: float, retry_after: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    The server's ``Retry-After`` wins when given; otherwise exponential back-off
    ``base * 2**(attempt-1)`` with "equal jitter" (half fixed, half random), so
    many workers hit by the same 503 burst do not retry in lock-step. Both are
    capped at ``cap``.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class RateLimiter:
    """Requests-per-minute spacing plus a tokens-per-minute bucket, both optional.

    Requests are spaced evenly (``60/rpm`` s apart), no bursts. Tokens use a
    bucket of one minute's worth that refills continuously: a call reserves its
    estimate up front (prompt size + max new tokens) and ``settle`` trues it up
    with the usage the server reported, waking a waiting caller. Must be used
    on one event loop (remote engines keep one limiter per loop).
    """

    def __init__(self, *, requests_per_minute: float | None,
                 tokens_per_minute: float | None) -> None:
        self._interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next_slot = 0.0
        self._tpm = float(tokens_per_minute or 0)
        self._tokens = self._tpm
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()
        self._settled = asyncio.Event()

    @property
    def active(self) -> bool:
        return bool(self._interval or self._tpm)

    async def acquire(self, estimated_tokens: int = 0) -> None:
        """Wait until both limits allow one more request of ``estimated_tokens``."""
        async with self._lock:  # FIFO: callers are served in arrival order
            if self._interval:
                now = time.monotonic()
                self._next_slot = max(self._next_slot, now)
                wait, self._next_slot = self._next_slot - now, self._next_slot + self._interval
                if wait > 0:
                    await asyncio.sleep(wait)
            if self._tpm:
                await self._take_tokens(min(float(estimated_tokens), self._tpm))

    async def _take_tokens(self, amount: float) -> None:
        while True:
            self._refill()
            if self._tokens >= amount:
                self._tokens -= amount
                return
            self._settled.clear()  # a settle() may hand tokens back before the refill
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._settled.wait(),
                                       (amount - self._tokens) * 60.0 / self._tpm)

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._tpm, self._tokens + (now - self._stamp) * self._tpm / 60.0)
        self._stamp = now

    def settle(self, estimated_tokens: int, used_tokens: int) -> None:
        """Correct the bucket once the server reported the real token count."""
        if self._tpm:
            self._refill()
            self._tokens = min(self._tpm, self._tokens + estimated_tokens - used_tokens)
            self._settled.set()
