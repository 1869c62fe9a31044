"""The application container: composes settings, logging, one HTTP session and the catalogs
of engines, chains and pipelines.

Entry points (CLI, gateway) build it; domain code receives what it needs.

    container = build_container("deploy.yaml")
    chain = container.chains().get("default")
    container.engines.override(providers.Object(EngineCatalog({}, overrides={"x": fake})))  # tests
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from dependency_injector import containers, providers
from inferline.engines.catalog import EngineCatalog
from inferline.pipelines.catalog import ChainCatalog, PipelineCatalog
from inferline.settings import InferlineSettings, load_settings

from inferline.logging import configure_logging


def _logging(settings: InferlineSettings) -> Iterator[None]:
    secrets = [s.remote_params.api_key_env_varname for s in settings.engines.values()
               if s.remote_params and s.remote_params.api_key_env_varname]
    configure_logging(settings.log, [*secrets, *settings.server.api_key_env_varnames])
    yield


async def _http_session() -> AsyncIterator[aiohttp.ClientSession]:
    session = aiohttp.ClientSession()
    yield session
    await session.close()


class Container(containers.DeclarativeContainer):
    settings = providers.Singleton(load_settings)
    logging = providers.Resource(_logging, settings)
    http_session = providers.Resource(_http_session)
    engine_overrides = providers.Dict()
    engines = providers.Singleton(EngineCatalog, settings.provided.engines,
                                  overrides=engine_overrides)
    chains = providers.Singleton(ChainCatalog, settings.provided.chains, engines)
    pipelines = providers.Singleton(PipelineCatalog, settings.provided.pipelines, chains)


def build_container(settings_file: str | Path | None = None, *, env: str | None = None,
                    overrides: dict[str, Any] | None = None) -> Container:
    container = Container()
    container.settings.override(providers.Object(
        load_settings(settings_file, env=env, overrides=overrides)))
    container.logging.init()
    return container


__all__ = ["Container", "build_container"]
