"""Named fallback chains and pipelines from settings, sharing engines and circuit breakers.

    chains = ChainCatalog(settings.chains, EngineCatalog(settings.engines))
    chain = chains.get("default")
    chain = chains.inline(["local_llamacpp", "openai"])   # a pipeline's inline list
    chains = ChainCatalog(settings.chains, engines, store=shared_state(settings.state))  # replicas

A member that names another chain is replaced by that chain's engines.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from inferline.engines.cache import cache_layers
from inferline.engines.catalog import EngineCatalog
from inferline.errors import ConfigurationError
from inferline.pipelines.breaker import Breakers, BreakerStore
from inferline.pipelines.fallback import FallbackChain
from inferline.pipelines.pipeline import Pipeline
from inferline.pipelines.spec import PipelineSpec
from inferline.settings.model import (
    CacheSettings,
    ChainSettings,
    PipelineSettings,
    expand_chain,
)


class ChainCatalog:
    def __init__(self, chains: Mapping[str, ChainSettings], engines: EngineCatalog,
                 store: BreakerStore | None = None) -> None:
        self.specs, self.engines = dict(chains), engines
        # per engine, shared by every chain (and through ``store`` by every replica)
        self.breakers = Breakers(store)
        self._built: dict[str, FallbackChain] = {}

    def names(self) -> list[str]:
        return list(self.specs)

    def get(self, name: str, *, cache: CacheSettings | None = None) -> FallbackChain:
        """The chain called ``name``; with ``cache`` (a pipeline step's), a twin whose
        engines use that cache over the chain's and their own."""
        spec = self.specs.get(name)
        if spec is None:
            hint = next(iter(difflib.get_close_matches(name, self.names(), 1)), None)
            raise ConfigurationError(f"unknown chain {name!r}", key="chains", hint=hint)
        return self._chain(name, spec, cache)

    def retired(self) -> dict[str, str]:
        """Engines a chain took out of service (their preflight or load failed), and why."""
        return {name: why for chain in self._built.values()
                for name, why in chain.unavailable.items()}

    def inline(self, members: list[str], *,
               cache: CacheSettings | None = None) -> FallbackChain:
        """A chain over ``members`` (engine or chain names), with the default chain settings."""
        return self._chain("[" + ", ".join(members) + "]", ChainSettings(engines=members), cache)

    def _chain(self, name: str, spec: ChainSettings, cache: CacheSettings | None) -> FallbackChain:
        """The chain ``name`` over ``spec``, built once per step cache."""
        key = name if cache is None else f"{name} cache={cache.model_dump_json()}"
        if key not in self._built:
            try:
                engines = expand_chain(name, {**self.specs, name: spec}, self.engines.names())
            except ValueError as exc:
                raise ConfigurationError(str(exc), key=f"chains.{name}") from None
            cache = cache_layers(spec.cache, cache)  # the chain's cache, a step's over it
            self._built[key] = FallbackChain(
                name, [self.engines.get(n, cache=cache) for n in engines], spec, self.breakers)
        return self._built[key]


class PipelineCatalog:
    """Pipelines by name: YAML files in ``settings.dirs`` (first wins), then the packaged
    examples. Each is built once, over the shared chains.

    pipelines = PipelineCatalog(settings.pipelines, chains)
    pipelines.get("capital-quiz"); pipelines.load("my/pipeline.yaml")
    """

    EXAMPLES = Path(__file__).parent / "examples"

    def __init__(self, settings: PipelineSettings, chains: ChainCatalog) -> None:
        self.settings, self.chains = settings, chains
        self._specs: dict[str, PipelineSpec] | None = None
        self._built: dict[str, Pipeline] = {}

    def specs(self) -> dict[str, PipelineSpec]:
        """Pipeline name -> its checked spec, every file read once."""
        if self._specs is None:
            specs: dict[str, PipelineSpec] = {}  # kept only once every file has been read
            for i, folder in enumerate([*map(Path, self.settings.dirs), self.EXAMPLES]):
                if not folder.is_dir():  # one of the settings' (the examples are packaged)
                    raise ConfigurationError(f"no such folder: {folder}",
                                             key=f"pipelines.dirs.{i}")
                for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
                    spec = PipelineSpec.from_yaml(path)
                    specs.setdefault(spec.name, spec)
            self._specs = specs
        return self._specs

    def names(self) -> list[str]:
        return list(self.specs())

    def get(self, name: str) -> Pipeline:
        if name not in self._built:
            spec = self.specs().get(name)
            if spec is None:
                hint = next(iter(difflib.get_close_matches(name, self.names(), 1)), None)
                raise ConfigurationError(f"unknown pipeline {name!r} (known: "
                                         f"{', '.join(self.names()) or 'none'})", hint=hint)
            self._built[name] = self._build(spec)
        return self._built[name]

    def load(self, name_or_path: str) -> Pipeline:
        """A pipeline file, or a pipeline by name."""
        if Path(name_or_path).suffix in (".yaml", ".yml") or Path(name_or_path).is_file():
            return self._build(PipelineSpec.from_yaml(name_or_path))
        return self.get(name_or_path)

    def _build(self, spec: PipelineSpec) -> Pipeline:
        return Pipeline(spec, self.chains, allowed_modules=self.settings.allowed_modules)
