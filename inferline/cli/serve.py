"""``inferline serve``: the OpenAI-compatible gateway over the settings' chains and pipelines.

    inferline serve --settings prod.yaml --host 0.0.0.0 --port 8000
    inferline serve --workers 4        # four processes on one port (SO_REUSEPORT)

Binding anything but loopback needs API keys (``server.api_key_env_varnames``) or
``--allow-unauthenticated-public``. SIGTERM / SIGINT drain: in-flight requests get
``server.shutdown_grace_s`` to finish. With ``--workers`` the parent passes the signal on to
every worker and waits for all (``inferline.server.workers``).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from inferline.server.auth import ApiKeys, check_bind
from inferline.server.runner import run as run_loop

if TYPE_CHECKING:
    from aiohttp import web

    from inferline.containers import Container
    from inferline.pipelines.catalog import PipelineCatalog


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", metavar="FILE", help="settings YAML (default: the profile)")
    parser.add_argument("--env", help="settings profile (dev, prod, ...)")
    parser.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: server.port, 8000; 0: any)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="processes serving the port (default: server.workers, 1)")
    parser.add_argument("--allow-unauthenticated-public", action="store_true",
                        help="bind a non-loopback address without API keys")


def run(args: argparse.Namespace) -> int:
    container = _container(args)
    server = container.settings().server
    keys = ApiKeys.from_env(server.api_key_env_varnames)
    check_bind(server.host, keys, allow_public=server.allow_unauthenticated_public)
    if server.workers > 1:
        from inferline.server.workers import supervise

        _check_pipelines(container)  # once, here, rather than once per worker
        return supervise(_worker, (args,), workers=server.workers, host=server.host,
                         port=server.port, grace_s=server.shutdown_grace_s)
    run_loop(_serve(container))
    return 0


def _worker(args: argparse.Namespace, port: int, ready: Callable[[str], None]) -> None:
    """One process of ``--workers``: its own container and app, on the parent's port."""
    args.port = port
    run_loop(_serve(_container(args), reuse_port=True, on_ready=ready))


def _container(args: argparse.Namespace) -> Container:
    """The container, with the flags given as the settings layer that beats every other."""
    from inferline.containers import build_container

    server = {"host": args.host, "port": args.port, "workers": args.workers,
              "allow_unauthenticated_public": args.allow_unauthenticated_public or None}
    overrides = {"server": {k: v for k, v in server.items() if v is not None}}
    return build_container(args.settings, env=args.env, overrides=overrides)


def _check_pipelines(container: Container) -> PipelineCatalog:
    pipelines = container.pipelines()
    for name in pipelines.names():  # a broken pipeline stops the start, not a request
        pipelines.get(name)
    return pipelines


async def _serve(container: Container, *, reuse_port: bool = False,
                 on_ready: Callable[[str], None] | None = None) -> None:
    from inferline.containers import started
    from inferline.server import create_app
    from inferline.server.runner import serve

    settings, pipelines = container.settings(), _check_pipelines(container)
    keys = ApiKeys.from_env(settings.server.api_key_env_varnames)
    app = create_app(container.chains(), container.engines(), pipelines, settings.server,
                     log_settings=settings.log, keys=keys, spend_store=container.state())

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with started(container):  # on cleanup: every engine built is closed
            yield

    app.cleanup_ctx.append(resources)
    await serve(app, settings.server.host, settings.server.port,
                shutdown_grace_s=settings.server.shutdown_grace_s, reuse_port=reuse_port,
                on_ready=on_ready)
