"""A fallback chain: engines tried in order, one row at a time.

A chain holds engines (or other chains) and offers the same door as an engine
(``agenerate``, ``astream``, and the adapters over them)::

    chain = FallbackChain("default", [vllm, llamacpp, openai], ChainSettings(engines=[...]))
    [outcome] = await chain.agenerate([conv])      # a Completion, or the row's error
    outcome.served_by, outcome.attempts

Per row, the chain moves to the next engine on the error kinds in
``fallback_on`` (by default: unavailable, and retryable after the engine's own
retries; ``invalid_output`` is the pipeline's to act on, through ``after``),
and always when the engine cannot do what the request asks
(``UnsupportedRequestError``: that engine stays in service for other requests).
An engine whose ``preflight`` or ``load`` fails is skipped for the chain's life;
an engine whose circuit is open is skipped until its cooldown ends. Streaming
falls back only before the first chunk. Closing a chain closes nothing: its engines
belong to their catalog.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence

import structlog

from inferline.core.configs import InferenceConfig
from inferline.core.types import Conversation
from inferline.engines.base import Completion, Generator, Outcome, StreamChunk
from inferline.errors import (
    AllEnginesFailedError,
    Attempt,
    ConfigurationError,
    EngineError,
    EngineUnavailableError,
    FatalEngineError,
    InferlineError,
    UnsupportedRequestError,
)
from inferline.pipelines.breaker import Breakers, CircuitBreaker
from inferline.settings.model import ChainSettings

log = structlog.get_logger(__name__)

UNAVAILABLE = "EngineUnavailableError"


class FallbackChain(Generator):
    def __init__(self, name: str, engines: Sequence[Generator],
                 settings: ChainSettings | None = None,
                 breakers: dict[str, CircuitBreaker] | None = None) -> None:
        if not engines:
            raise ConfigurationError(f"chain {name!r} has no engines", key=f"chains.{name}")
        self.name = name
        self.engines = list(engines)
        self.settings = settings or ChainSettings(engines=[e.name for e in engines])
        self.breakers = breakers if breakers is not None else {}
        self.unavailable: dict[str, str] = {}  # engine -> reason its preflight or load failed
        self._ready: set[str] = set()  # engines whose preflight and load passed
        self._rest: dict[str, FallbackChain] = {}  # after(): the chains of later engines

    def __repr__(self) -> str:
        return f"FallbackChain({self.name!r}, {[e.name for e in self.engines]})"

    def breaker(self, engine: Generator) -> CircuitBreaker:
        """``engine``'s breaker, made on first use (shared through the breakers' store)."""
        breaker = self.breakers.get(engine.name)
        if breaker is None:
            cb = self.settings.circuit_breaker
            store = self.breakers.store if isinstance(self.breakers, Breakers) else None
            breaker = self.breakers[engine.name] = CircuitBreaker(
                cb.failure_threshold, cb.cooldown_s, store=store, key=engine.name)
        return breaker

    def _candidates(self) -> list[Generator]:
        return self.engines[:self.settings.max_attempts or len(self.engines)]

    # -- which engines can be tried ------------------------------------------------

    def _preflight(self, engine: Generator) -> str | None:
        """Why ``engine`` can never run here (cached), or None."""
        if engine.name not in self.unavailable and engine.name not in self._ready:
            try:
                engine.preflight()
            except (EngineUnavailableError, ConfigurationError) as exc:
                self._retire(engine, exc)
        return self.unavailable.get(engine.name)

    def _retire(self, engine: Generator, exc: InferlineError) -> str:
        reason = self.unavailable[engine.name] = str(exc)
        log.warning("engine_unavailable", chain=self.name, engine=engine.name, reason=reason)
        return reason

    async def _skip(self, engine: Generator) -> str | None:
        """Why ``engine`` is not tried now (unavailable, circuit open), or None; loads it."""
        if (reason := self._preflight(engine)) is not None:
            return reason
        if not await self.breaker(engine).admit():  # shared: asks the other replicas too
            return "circuit open"
        if engine.name not in self._ready:
            try:
                await engine.aload()
            except (EngineUnavailableError, ConfigurationError) as exc:
                return self._retire(engine, exc)
            self._ready.add(engine.name)
        return None

    def after(self, served_by: str) -> FallbackChain | None:
        """The engines after ``served_by`` (or after the member chain that holds it), as a
        chain that shares this one's breakers and retirements; None if none is left. Where a
        row goes when its answer is rejected (``fallback_on: [invalid_output]``)."""
        rest = self._after(served_by)
        if not rest:
            return None
        name = f"{self.name}>{served_by}"
        if name not in self._rest:
            sub = FallbackChain(name, rest, self.settings.model_copy(
                update={"engines": [e.name for e in rest], "max_attempts": None}), self.breakers)
            sub.unavailable, sub._ready = self.unavailable, self._ready
            self._rest[name] = sub
        return self._rest[name]

    def member(self, name: str) -> Generator | None:
        """The engine called ``name`` in this chain or in a member chain."""
        for engine in self.engines:
            found = engine.member(name) if isinstance(engine, FallbackChain) else engine
            if found is not None and found.name == name:
                return found
        return None

    def _after(self, served_by: str) -> list[Generator] | None:
        members = self._candidates()
        for i, member in enumerate(members):
            if member.name == served_by:
                return members[i + 1:]
            inner = member._after(served_by) if isinstance(member, FallbackChain) else None
            if inner is not None:
                return [*inner, *members[i + 1:]]
        return None

    def plan(self) -> dict[str, str | None]:
        """Each engine's reason to be skipped now, or None if it would be tried.

        Runs only the cheap preflight (no load); an unavailable engine is logged once.
        """
        return {e.name: self._preflight(e) or (None if self.breaker(e).allow() else "circuit open")
                for e in self._candidates()}

    # -- one engine's outcome for one row, recorded once --------------------------------

    def _settle(self, engine: Generator, outcome: Outcome | InferlineError, tried: list[Attempt],
                latency_s: float) -> bool:
        """Record ``engine``'s outcome for a row in ``tried``; True if the row moves on."""
        if isinstance(outcome, Completion):
            self.breaker(engine).record(ok=True)
            tried.extend(outcome.attempts or [Attempt(engine.name, None, None, latency_s)])
            outcome.attempts = tried
            return False
        if isinstance(outcome, AllEnginesFailedError):  # an inner chain: keep its detail
            tried.extend(outcome.attempts)
        else:
            tried.append(Attempt(engine.name, type(outcome).__name__, str(outcome), latency_s))
        if isinstance(outcome, UnsupportedRequestError):
            return True  # the request's doing, not the engine's: no strike against it
        self.breaker(engine).record(ok=False)
        return self._moves_on(outcome)

    def _moves_on(self, error: InferlineError) -> bool:
        kinds = self.settings.fallback_on
        if isinstance(error, EngineUnavailableError | AllEnginesFailedError):
            return "unavailable" in kinds
        if isinstance(error, FatalEngineError):
            return "fatal" in kinds
        return isinstance(error, EngineError) and "retryable" in kinds

    def _exhausted(self, tried: list[Attempt], last: InferlineError | None) -> InferlineError:
        """A row no engine served: the request error if every engine refused the request."""
        if isinstance(last, UnsupportedRequestError) and all(
                a.error in (UNAVAILABLE, type(last).__name__) for a in tried):
            return last
        return AllEnginesFailedError(self.name, tried)

    # -- the door ---------------------------------------------------------------------

    async def agenerate(self, conversations: Sequence[Conversation],
                        inference_config: InferenceConfig | None = None) -> list[Outcome]:
        """Each row through the engines in order; each engine's pass is one batch call."""
        outcomes: list[Outcome | None] = [None] * len(conversations)
        tried: list[list[Attempt]] = [[] for _ in conversations]
        last: dict[int, InferlineError] = {}
        pending = list(range(len(conversations)))
        for engine in self._candidates():
            if not pending:
                break
            if (reason := await self._skip(engine)) is not None:
                for i in pending:
                    tried[i].append(Attempt(engine.name, UNAVAILABLE, reason, 0.0))
                continue
            start = time.monotonic()
            results = await engine.agenerate([conversations[i] for i in pending], inference_config)
            latency, moved = time.monotonic() - start, []
            for i, result in zip(pending, results, strict=True):
                if self._settle(engine, result, tried[i], latency):
                    moved.append(i)
                    last[i] = result  # type: ignore[assignment]
                else:
                    outcomes[i] = result
            if moved:
                log.warning("engine_fallback", chain=self.name, failed=engine.name,
                            rows=len(moved), error=tried[moved[0]][-1].error)
            pending = moved
        for i in pending:
            outcomes[i] = self._exhausted(tried[i], last.get(i))
        return outcomes  # type: ignore[return-value]

    async def astream(self, conversation: Conversation,
                      inference_config: InferenceConfig | None = None,
                      ) -> AsyncGenerator[StreamChunk, None]:
        """The first engine that starts answering streams the answer; its last chunk
        carries the attempts. A failure after the first chunk is raised."""
        tried: list[Attempt] = []
        last: InferlineError | None = None
        for engine in self._candidates():
            if (reason := await self._skip(engine)) is not None:
                tried.append(Attempt(engine.name, UNAVAILABLE, reason, 0.0))
                continue
            start, sent = time.monotonic(), False
            try:
                async for chunk in engine.astream(conversation, inference_config):
                    sent = True
                    if chunk.finish_reason is not None:
                        done = Completion("", attempts=chunk.attempts or [])
                        self._settle(engine, done, tried, time.monotonic() - start)
                        chunk.attempts = tried
                    yield chunk
                return
            except InferlineError as exc:
                if sent:
                    self.breaker(engine).record(ok=False)
                    raise
                if not self._settle(engine, exc, tried, time.monotonic() - start):
                    raise
                last = exc
                log.warning("engine_fallback", chain=self.name, failed=engine.name,
                            error=type(exc).__name__)
        raise self._exhausted(tried, last)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "type": "chain", "engines": [e.name for e in self.engines],
                "unavailable": dict(self.unavailable),
                "circuits": {e.name: self.breaker(e).state for e in self.engines}}
