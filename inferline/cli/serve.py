"""``inferline serve``: the OpenAI-compatible gateway over the settings' chains and pipelines.

    inferline serve --settings prod.yaml --host 0.0.0.0 --port 8000

Binding anything but loopback needs API keys (``server.api_key_env_varnames``) or
``--allow-unauthenticated-public``. SIGTERM / SIGINT drain: in-flight requests get
``server.shutdown_grace_s`` to finish.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from inferline.server.auth import ApiKeys, check_bind

if TYPE_CHECKING:
    from aiohttp import web

    from inferline.containers import Container


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", metavar="FILE", help="settings YAML (default: the profile)")
    parser.add_argument("--env", help="settings profile (dev, prod, ...)")
    parser.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: server.port, 8000; 0: any)")
    parser.add_argument("--allow-unauthenticated-public", action="store_true",
                        help="bind a non-loopback address without API keys")


def run(args: argparse.Namespace) -> int:
    from inferline.containers import build_container

    container = build_container(args.settings, env=args.env, overrides=_flags(args))
    server = container.settings().server
    keys = ApiKeys.from_env(server.api_key_env_varnames)
    check_bind(server.host, keys, allow_public=server.allow_unauthenticated_public)
    asyncio.run(_serve(container, keys))
    return 0


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as the settings layer that beats every other (validated with it)."""
    server = {"host": args.host, "port": args.port,
              "allow_unauthenticated_public": args.allow_unauthenticated_public or None}
    return {"server": {k: v for k, v in server.items() if v is not None}}


async def _serve(container: Container, keys: ApiKeys) -> None:
    from inferline.containers import started
    from inferline.server import create_app
    from inferline.server.runner import serve

    settings, pipelines = container.settings(), container.pipelines()
    for name in pipelines.names():  # a broken pipeline stops the start, not a request
        pipelines.get(name)
    app = create_app(container.chains(), container.engines(), pipelines, settings.server,
                     log_settings=settings.log, keys=keys)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with started(container):  # on cleanup: every engine built is closed
            yield

    app.cleanup_ctx.append(resources)
    await serve(app, settings.server.host, settings.server.port,
                shutdown_grace_s=settings.server.shutdown_grace_s)
