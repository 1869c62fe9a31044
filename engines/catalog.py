"""Named engines from settings, built lazily and shared.

    catalog = EngineCatalog(settings.engines)
    engine = catalog.get("local_llamacpp")      # built on first use, then cached
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from inferline.engines import build_engine
from inferline.errors import ConfigurationError

if TYPE_CHECKING:
    from inferline.engines.base import BaseInferenceEngine
    from inferline.settings.model import EngineSettings


class EngineCatalog:
    def __init__(self, specs: Mapping[str, EngineSettings], *,
                 overrides: Mapping[str, BaseInferenceEngine] | None = None) -> None:
        self.specs = dict(specs)
        self._built: dict[str, BaseInferenceEngine] = dict(overrides or {})

    def names(self) -> list[str]:
        return list(dict.fromkeys([*self.specs, *self._built]))

    def get(self, name: str) -> BaseInferenceEngine:
        engine = self._built.get(name)
        if engine is None:
            spec = self.specs.get(name)
            if spec is None:
                hint = next(iter(difflib.get_close_matches(name, self.names(), 1)), None)
                raise ConfigurationError(f"unknown engine {name!r}", key="engines", hint=hint)
            engine = build_engine(spec.type, spec.model, generation_params=spec.generation,
                                  remote_params=spec.remote_params, name=name)
            engine.self_check = spec.self_check
            self._built[name] = engine
        return engine

    def add(self, name: str, engine: BaseInferenceEngine) -> None:
        """Adopt an engine built elsewhere (``inferline infer --engine``): closed with the rest."""
        self._built[name] = engine

    async def aclose(self) -> None:
        for engine in self._built.values():
            await engine.aclose()
