"""What the gateway serves: named chains, engines and pipelines, plus its counters.

    gw = Gateway(chains, engines, pipelines, settings, InFlight(settings.server.max_concurrency))
    engine = gw.model("default")      # a chain first, else an engine; ApiError(404) if neither

Collaborators arrive here; nothing in ``inferline.server`` imports the container.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from inferline.server.errors import ApiError
from inferline.server.limits import InFlight
from inferline.server.metrics import Metrics

if TYPE_CHECKING:
    from inferline.engines.base import Generator
    from inferline.engines.catalog import EngineCatalog
    from inferline.pipelines.catalog import ChainCatalog, PipelineCatalog
    from inferline.pipelines.pipeline import Pipeline
    from inferline.settings.model import InferlineSettings


@dataclass
class Gateway:
    chains: ChainCatalog
    engines: EngineCatalog
    pipelines: PipelineCatalog | None
    settings: InferlineSettings
    in_flight: InFlight  # inference requests now, up to ``server.max_concurrency``
    metrics: Metrics = field(default_factory=Metrics)

    def model(self, name: str) -> Generator:
        """The chain or engine called ``name`` (chains win a tie)."""
        if name in self.chains.names():
            return self.chains.get(name)
        if name in self.engines.names():
            return self.engines.get(name)
        raise _not_found("model", name, [*self.chains.names(), *self.engines.names()])

    def pipeline(self, name: str) -> Pipeline:
        if self.pipelines is not None and name in self.pipelines.names():
            return self.pipelines.get(name)
        raise _not_found("pipeline", name, self.pipelines.names() if self.pipelines else [])


def _not_found(kind: str, name: str, known: list[str]) -> ApiError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known) or 'none'}"
    param = "model" if kind == "model" else None
    return ApiError(404, f"{kind} {name!r} not found{hint}", code=f"{kind}_not_found", param=param)


GATEWAY = web.AppKey("gateway", Gateway)
