"""A fallback chain: engines tried in order, itself usable as an engine.

    chain = FallbackChain("default", [vllm, llamacpp, openai], ChainSettings(engines=[...]))
    [out] = await chain.ainfer([conv])
    out.metadata["served_by"], out.metadata["attempts"]

Per row, the chain moves to the next engine on the error kinds in
``fallback_on`` (by default: unavailable, and retryable after the engine's own
retries). An engine found unavailable by ``preflight()`` is skipped for the
chain's life; an engine whose circuit is open is skipped until its cooldown
ends. Streaming falls back only before the first chunk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import structlog
from inferline.engines.base import (
    BaseInferenceEngine,
    Completion,
    RowResult,
    StreamChunk,
)
from inferline.pipelines.breaker import CircuitBreaker
from inferline.settings.model import ChainSettings

from inferline.core.configs import (
    GenerationParams,
    InferenceConfig,
    InferenceEngineType,
)
from inferline.core.types import Conversation
from inferline.errors import (
    AllEnginesFailedError,
    Attempt,
    ConfigurationError,
    EngineError,
    EngineUnavailableError,
    FatalEngineError,
    InferlineError,
)

log = structlog.get_logger(__name__)


class FallbackChain(BaseInferenceEngine):
    engine_type = InferenceEngineType.REMOTE  # a chain has no backend of its own
    supported_params = frozenset(GenerationParams.model_fields)
    can_stream = True

    def __init__(self, name: str, engines: Sequence[BaseInferenceEngine],
                 settings: ChainSettings | None = None,
                 breakers: dict[str, CircuitBreaker] | None = None) -> None:
        if not engines:
            raise ConfigurationError(f"chain {name!r} has no engines", key=f"chains.{name}")
        super().__init__(engines[0].model_params, name=name)
        self.engines = list(engines)
        self.settings = settings or ChainSettings(engines=[e.name for e in engines])
        self.breakers = breakers if breakers is not None else {}
        self.unavailable: dict[str, str] = {}  # engine name -> reason, found by preflight

    def breaker(self, engine: BaseInferenceEngine) -> CircuitBreaker:
        cb = self.settings.circuit_breaker
        return self.breakers.setdefault(engine.name, CircuitBreaker(cb.failure_threshold,
                                                                     cb.cooldown_s))

    def _skip_reason(self, engine: BaseInferenceEngine) -> str | None:
        """Why ``engine`` cannot be tried now, or None."""
        if engine.name not in self.unavailable:
            try:
                engine.preflight()
            except EngineUnavailableError as exc:
                self.unavailable[engine.name] = str(exc)
                log.warning("engine_unavailable", chain=self.name, engine=engine.name,
                            reason=str(exc))
        if engine.name in self.unavailable:
            return self.unavailable[engine.name]
        return None if self.breaker(engine).allow() else "circuit open"

    def plan(self) -> dict[str, str | None]:
        """Each engine's reason to be skipped now, or None if it would be tried.

        Runs only the cheap preflight (no load); an unavailable engine is logged once.
        """
        return {engine.name: self._skip_reason(engine) for engine in self._candidates()}

    def _moves_on(self, error: InferlineError) -> bool:
        kinds = self.settings.fallback_on
        if isinstance(error, EngineUnavailableError):
            return "unavailable" in kinds
        if isinstance(error, FatalEngineError):
            return "fatal" in kinds
        return isinstance(error, EngineError) and "retryable" in kinds

    def _candidates(self) -> list[BaseInferenceEngine]:
        limit = self.settings.max_attempts or len(self.engines)
        return self.engines[:limit]

    async def _agenerate(self, conversations: Sequence[Conversation],
                         params: GenerationParams) -> list[Completion]:
        raise AssertionError("FallbackChain overrides aiter_results; _agenerate is unused")

    async def aiter_results(self, conversations: Sequence[Conversation],
                            inference_config: InferenceConfig | None = None,
                            ) -> AsyncIterator[RowResult]:
        async for result in self._results(conversations, inference_config, batch=False):
            yield result

    async def ainfer_partial(self, conversations: Sequence[Conversation],
                             inference_config: InferenceConfig | None = None) -> list[RowResult]:
        """Every row's result in input order; each engine's pass is one batch call
        (``engine.ainfer_partial``) instead of a stream, for callers that wait for all."""
        results = [r async for r in self._results(conversations, inference_config, batch=True)]
        return sorted(results, key=lambda r: r.index)

    async def _results(self, conversations: Sequence[Conversation],
                       inference_config: InferenceConfig | None, *,
                       batch: bool) -> AsyncIterator[RowResult]:
        pending = list(range(len(conversations)))
        attempts: dict[int, list[Attempt]] = {}  # failed attempts, for the rows that had some
        for engine in self._candidates():
            if not pending:
                break
            reason = self._skip_reason(engine)
            if reason is not None:
                for i in pending:
                    attempts.setdefault(i, []).append(
                        Attempt(engine.name, "EngineUnavailableError", reason, 0.0))
                continue
            failed: list[int] = []
            async for result in self._try(engine, conversations, pending, attempts,
                                          inference_config, batch):
                if result.error is not None and self._moves_on(result.error):
                    failed.append(result.index)
                else:
                    yield result
            if failed:
                log.warning("engine_fallback", chain=self.name, failed=engine.name, rows=len(failed),
                            error=attempts[failed[0]][-1].error)
            pending = failed
        for i in pending:
            yield RowResult(i, error=AllEnginesFailedError(self.name, attempts.get(i, [])))

    async def _try(self, engine: BaseInferenceEngine, conversations: Sequence[Conversation],
                   rows: list[int], attempts: dict[int, list[Attempt]],
                   config: InferenceConfig | None, batch: bool) -> AsyncIterator[RowResult]:
        """One engine over ``rows``; results carry chain row indices; failures join ``attempts``."""
        start, breaker, answered = time.monotonic(), self.breaker(engine), set()
        subset = [conversations[i] for i in rows]
        try:
            results = (_each(await engine.ainfer_partial(subset, config)) if batch
                       else engine.aiter_results(subset, config))
            async for result in results:
                i, error = rows[result.index], result.error
                answered.add(i)
                attempt = Attempt(engine.name, error and type(error).__name__,
                                  error and str(error), time.monotonic() - start)
                breaker.record(ok=error is None)
                if error is not None:
                    attempts.setdefault(i, []).append(attempt)
                    yield RowResult(i, error=error)
                    continue
                out = result.conversation
                assert out is not None  # a fresh object from the engine: annotate it in place
                out.metadata.update(served_by=engine.name, attempts=[
                    *(a.as_dict() for a in attempts.get(i, ())), attempt.as_dict()])
                result.index = i
                yield result
        except (EngineError, ConfigurationError) as exc:  # whole call failed (load, params)
            if isinstance(exc, EngineUnavailableError | ConfigurationError):
                self.unavailable[engine.name] = str(exc)
            breaker.record(ok=False)
            for i in (r for r in rows if r not in answered):
                attempts.setdefault(i, []).append(Attempt(engine.name, type(exc).__name__,
                                                          str(exc), time.monotonic() - start))
                yield RowResult(i, error=exc if isinstance(exc, EngineError)
                                else EngineUnavailableError(str(exc), engine=engine.name))

    async def astream(self, conversation: Conversation,
                      inference_config: InferenceConfig | None = None,
                      ) -> AsyncIterator[StreamChunk]:
        attempts: list[Attempt] = []
        for engine in self._candidates():
            reason = self._skip_reason(engine)
            if reason is not None:
                attempts.append(Attempt(engine.name, "EngineUnavailableError", reason, 0.0))
                continue
            start, sent = time.monotonic(), False
            try:
                async for chunk in engine.astream(conversation, inference_config):
                    sent = True
                    chunk.engine = engine.name
                    yield chunk
                self.breaker(engine).record(ok=True)
                return
            except EngineError as exc:
                self.breaker(engine).record(ok=False)
                if sent or not self._moves_on(exc):
                    raise
                attempts.append(Attempt(engine.name, type(exc).__name__, str(exc),
                                        time.monotonic() - start))
                log.warning("engine_fallback", chain=self.name, failed=engine.name,
                            error=type(exc).__name__)
        raise AllEnginesFailedError(self.name, attempts)

    async def aclose(self) -> None:
        """Engines are shared and belong to their catalog, which closes them."""

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "type": "chain", "engines": [e.name for e in self.engines],
                "unavailable": dict(self.unavailable),
                "circuits": {e.name: self.breaker(e).state for e in self.engines}}


async def _each(items: Sequence[RowResult]) -> AsyncIterator[RowResult]:
    for item in items:
        yield item
