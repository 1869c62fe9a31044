"""Named fallback chains from settings, sharing engines and circuit breakers.

    chains = ChainCatalog(settings.chains, EngineCatalog(settings.engines))
    chain = chains.get("default")
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from inferline.engines.catalog import EngineCatalog
from inferline.pipelines.breaker import CircuitBreaker
from inferline.pipelines.fallback import FallbackChain
from inferline.settings.model import ChainSettings

from inferline.errors import ConfigurationError


class ChainCatalog:
    def __init__(self, chains: Mapping[str, ChainSettings], engines: EngineCatalog) -> None:
        self.specs, self.engines = dict(chains), engines
        self.breakers: dict[str, CircuitBreaker] = {}  # per engine, shared by every chain
        self._built: dict[str, FallbackChain] = {}

    def names(self) -> list[str]:
        return list(self.specs)

    def get(self, name: str) -> FallbackChain:
        if name not in self._built:
            spec = self.specs.get(name)
            if spec is None:
                hint = next(iter(difflib.get_close_matches(name, self.names(), 1)), None)
                raise ConfigurationError(f"unknown chain {name!r}", key="chains", hint=hint)
            members = [self.engines.get(n) for n in spec.engines]
            self._built[name] = FallbackChain(name, members, spec, self.breakers)
        return self._built[name]
