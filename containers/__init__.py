"""The application container: composes settings, logging and the catalogs of engines,
chains and pipelines, and owns their start and shutdown.

Entry points (CLI, gateway) build it; domain code receives what it needs. Each remote
engine keeps its own pooled aiohttp session (sessions are loop-bound, and an engine
runs on its caller's loop or, for sync calls, on inferline's own); the ``engine_shutdown``
resource closes every engine built (sessions, processes, model memory) on
``shutdown_resources()``.

    async with running("deploy.yaml") as container:   # every command: infer, run, serve
        chain = container.chains().get("default")
    # on exit every engine built is closed
    container.engines.override(providers.Object(EngineCatalog({}, overrides={"x": fake})))  # tests

The gateway enters ``started(container)`` from its app's ``cleanup_ctx``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dependency_injector import containers, providers

from inferline.engines.catalog import EngineCatalog
from inferline.logging import configure_logging
from inferline.pipelines.catalog import ChainCatalog, PipelineCatalog
from inferline.server.state import RedisState, shared_state
from inferline.settings import InferlineSettings, load_settings


def _logging(settings: InferlineSettings) -> None:
    secrets = [s.remote_params.api_key_env_varname for s in settings.engines.values()
               if s.remote_params and s.remote_params.api_key_env_varname]
    configure_logging(settings.log, [*secrets, *settings.server.api_key_env_varnames])


async def _closed_on_shutdown(
        resource: EngineCatalog | RedisState | None,
) -> AsyncIterator[EngineCatalog | RedisState | None]:
    yield resource
    if resource is not None:
        await resource.aclose()


class Container(containers.DeclarativeContainer):
    settings = providers.Singleton(load_settings)
    logging = providers.Resource(_logging, settings)
    engine_overrides = providers.Dict()
    state = providers.Singleton(shared_state, settings.provided.state)  # replicas share it
    state_shutdown = providers.Resource(_closed_on_shutdown, state)
    engines = providers.Singleton(EngineCatalog, settings.provided.engines,
                                  overrides=engine_overrides, limits=state,
                                  replay=settings.provided.replay,
                                  cassette=settings.provided.replay_cassette)
    engine_shutdown = providers.Resource(_closed_on_shutdown, engines)
    chains = providers.Singleton(ChainCatalog, settings.provided.chains, engines, store=state)
    pipelines = providers.Singleton(PipelineCatalog, settings.provided.pipelines, chains)


def build_container(settings_file: str | Path | None = None, *, env: str | None = None,
                    overrides: dict[str, Any] | None = None) -> Container:
    container = Container()
    container.settings.override(providers.Object(
        load_settings(settings_file, env=env, overrides=overrides)))
    container.logging.init()
    return container


@contextlib.asynccontextmanager
async def started(container: Container) -> AsyncIterator[Container]:
    """The container's resources, started; on exit shut down (every engine built is closed)."""
    # dependency-injector returns an awaitable when a resource is async, as the shutdowns are
    await container.init_resources()  # type: ignore[misc]
    try:
        yield container
    finally:
        await container.shutdown_resources()  # type: ignore[misc]


def running(settings_file: str | Path | None = None, *, env: str | None = None,
            overrides: dict[str, Any] | None = None,
            ) -> contextlib.AbstractAsyncContextManager[Container]:
    """``started(build_container(...))``: what every command runs inside."""
    return started(build_container(settings_file, env=env, overrides=overrides))


__all__ = ["Container", "build_container", "running", "started"]
