"""A circuit breaker per engine: closed -> open after N straight failures -> half-open
after the cooldown (one trial) -> closed on success, open again on failure.

    breaker = CircuitBreaker(failure_threshold=5, cooldown_s=30)
    if await breaker.admit(): ...; breaker.record(ok=True)

Replicas of a gateway share their breakers through a ``BreakerStore`` (Redis, see
``inferline.server.state``): ``admit`` asks the store, so an engine whose circuit one
replica opened is skipped by all, and at half-open exactly one replica wins the trial call.
Each breaker keeps a local mirror of the shared state (``state``, ``allow``: sync, for
``plan``/``describe``/``/ready``) and falls back on it while the store is unreachable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Circuit:
    """One engine's shared circuit as the store saw it."""

    failures: int
    open_for_s: float | None  # seconds since it opened; None while closed
    admitted: bool = False  # this caller may call the engine (closed, or it won the trial)
    cooldown_s: float | None = None  # the cooldown of the breaker that opened it (``read``)


class BreakerStore(Protocol):
    """Where replicas keep their breakers. Each call returns None if the store is unreachable."""

    async def admit(self, key: str, cooldown_s: float, trial_ttl_s: float) -> Circuit | None: ...

    async def record(self, key: str, ok: bool, failure_threshold: int,
                     cooldown_s: float) -> Circuit | None: ...

    async def read(self, keys: list[str]) -> dict[str, Circuit] | None: ...

    def status(self) -> dict[str, Any]:
        """For ``/ready``: ``{"backend": ..., "status": "ok" | "degraded", "reason": ...}``."""
        ...


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, *,
                 store: BreakerStore | None = None, key: str = "") -> None:
        self.failure_threshold, self.cooldown_s, self.clock = failure_threshold, cooldown_s, clock
        self.failures = 0
        self.opened_at: float | None = None
        self.store, self.key = store, key
        #: how long a won trial keeps other replicas out (then another may try)
        self.trial_ttl_s = max(cooldown_s, 10.0)
        self._pushes: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """Whether to call the engine, by this process's view (the mirror, when shared)."""
        return self.state != "open"

    async def admit(self) -> bool:
        """Whether to call the engine now: ``allow()``, asked of the store when shared."""
        if self.store is None:
            return self.allow()
        if self._pushes:  # this replica's own outcomes reach the store first
            await asyncio.gather(*list(self._pushes))
        shared = await self.store.admit(self.key, self.cooldown_s, self.trial_ttl_s)
        if shared is None:  # unreachable: go on with local state
            return self.allow()
        self.mirror(shared)
        return shared.admitted

    def record(self, ok: bool) -> None:
        if ok:
            pushed = self.failures or self.opened_at is not None
            self.failures, self.opened_at = 0, None
        else:
            pushed = True
            self.failures += 1
            if self.state == "half_open" or self.failures >= self.failure_threshold:
                self.opened_at = self.clock()
        if self.store is not None and pushed:  # a success on a clean circuit changes nothing
            self._push(ok)

    def mirror(self, shared: Circuit) -> None:
        """Take the shared state as this breaker's own."""
        self.failures = shared.failures
        self.opened_at = None if shared.open_for_s is None else self.clock() - shared.open_for_s

    def _push(self, ok: bool) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._send(ok))
        except RuntimeError:  # no loop (a sync caller): the mirror alone knows
            return
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    async def _send(self, ok: bool) -> None:
        assert self.store is not None
        shared = await self.store.record(self.key, ok, self.failure_threshold, self.cooldown_s)
        if shared is not None:
            self.mirror(shared)


class Breakers(dict[str, CircuitBreaker]):
    """The breakers of every engine, by name, shared by every chain; through ``store``
    (when given) also with every replica.

    breakers = Breakers(store)
    chain = FallbackChain("default", engines, settings, breakers)  # makes them on first use
    """

    def __init__(self, store: BreakerStore | None = None) -> None:
        super().__init__()
        self.store = store

    async def refresh(self, names: Iterable[str]) -> dict[str, CircuitBreaker] | None:
        """The breakers of ``names`` as the store has them (mirrors updated; an engine no chain
        here has used yet gets a breaker for the answer only); None if no store or unreachable."""
        shared = None if self.store is None else await self.store.read(list(names))
        if shared is None:
            return None
        out: dict[str, CircuitBreaker] = {}
        for name, circuit in shared.items():
            breaker = self.get(name) or CircuitBreaker(
                cooldown_s=circuit.cooldown_s or 0.0, store=self.store, key=name)
            breaker.mirror(circuit)
            out[name] = breaker
        return out
