"""Named engines from settings, built lazily and shared.

    catalog = EngineCatalog(settings.engines)
    engine = catalog.get("local_llamacpp")      # built on first use, then cached
    catalog = EngineCatalog(settings.engines, limits=shared_state(settings.state))  # replicas:
    # remote engines' requests_per_minute / tokens_per_minute hold across all of them
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from inferline.engines import build_engine
from inferline.engines.cache import (
    CachedEngine,
    CacheStore,
    Engine,
    cache_layers,
    open_store,
    store_id,
)
from inferline.errors import ConfigurationError

if TYPE_CHECKING:
    from inferline.engines._pacing import RateLimiter
    from inferline.engines.base import BaseInferenceEngine
    from inferline.engines.replay import Cassette
    from inferline.settings.model import CacheSettings, EngineSettings


class LimitSource(Protocol):
    """Rate limiters shared beyond one process (``inferline.server.state.RedisState``)."""

    def limiter(self, name: str, requests_per_minute: float | None,
                tokens_per_minute: float | None) -> RateLimiter: ...


class EngineCatalog:
    def __init__(self, specs: Mapping[str, EngineSettings], *,
                 overrides: Mapping[str, BaseInferenceEngine] | None = None,
                 limits: LimitSource | None = None,
                 replay: str = "off", cassette: str = "inferline.cassette.jsonl") -> None:
        self.specs, self.limits = dict(specs), limits
        self._built: dict[str, BaseInferenceEngine] = dict(overrides or {})
        self.replay, self.cassette = (None if replay == "off" else replay), cassette
        self._serving: dict[tuple[str, str], Engine] = {}  # (name, cache) -> wrapped engine
        self._stores: dict[tuple[str, str], CacheStore] = {}
        self._cassette: Cassette | None = None

    def names(self) -> list[str]:
        return list(dict.fromkeys([*self.specs, *self._built]))

    def get(self, name: str, *, cache: CacheSettings | None = None) -> Engine:
        """The engine called ``name``, behind its response cache (``engines.<name>.cache``,
        with ``cache`` over it: a chain's or a pipeline step's) and the run's record/replay."""
        engine, spec = self.engine(name), self.specs.get(name)
        settings = cache_layers(spec.cache if spec is not None else None, cache)
        if settings is not None and settings.mode == "off":
            settings = None
        if settings is None and self.replay is None:
            return engine
        key = (name, settings.model_dump_json() if settings is not None else "")
        if key not in self._serving:
            served: Engine = engine
            if settings is not None:
                where = store_id(settings)
                if where not in self._stores:
                    self._stores[where] = open_store(settings)
                served = CachedEngine(engine, self._stores[where], settings)
            if self.replay is not None:
                from inferline.engines.replay import Cassette, ReplayEngine

                self._cassette = self._cassette or Cassette(self.cassette)
                served = ReplayEngine(served, self._cassette, self.replay)
            self._serving[key] = served
        return self._serving[key]

    def engine(self, name: str) -> BaseInferenceEngine:
        """The engine called ``name`` itself, built on first use."""
        engine = self._built.get(name)
        if engine is None:
            spec = self.specs.get(name)
            if spec is None:
                hint = next(iter(difflib.get_close_matches(name, self.names(), 1)), None)
                raise ConfigurationError(f"unknown engine {name!r}", key="engines", hint=hint)
            engine = build_engine(spec.type, spec.model, generation_params=spec.generation,
                                  remote_params=spec.remote_params, name=name)
            engine.self_check, engine.price = spec.self_check, spec.price
            self._share_limits(name, engine)
            self._built[name] = engine
        return engine

    def _share_limits(self, name: str, engine: BaseInferenceEngine) -> None:
        from inferline.engines.remote import BaseRemoteEngine

        if self.limits is None or not isinstance(engine, BaseRemoteEngine):
            return
        limits, rpm, tpm = (self.limits, engine.remote_params.requests_per_minute,
                            engine.remote_params.tokens_per_minute)
        if rpm or tpm:
            engine.share_limits(lambda: limits.limiter(name, rpm, tpm))

    def add(self, name: str, engine: BaseInferenceEngine) -> None:
        """Adopt an engine built elsewhere (``inferline infer --engine``): closed with the rest."""
        self._built[name] = engine

    async def aclose(self) -> None:
        for engine in self._built.values():
            await engine.aclose()
        for store in self._stores.values():
            await store.aclose()
