"""``inferline serve``: the OpenAI-compatible gateway over the settings' chains and pipelines.

    inferline serve --settings prod.yaml --host 0.0.0.0 --port 8000

Binding anything but loopback needs API keys (``server.api_key_env_varnames``) or
``--allow-unauthenticated-public``. SIGTERM / SIGINT drain: in-flight requests get
``server.shutdown_grace_s`` to finish.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
from typing import Any

from inferline.server.auth import ApiKeys, check_bind
from inferline.settings.model import InferlineSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", metavar="FILE", help="settings YAML (default: the profile)")
    parser.add_argument("--env", help="settings profile (dev, prod, ...)")
    parser.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: server.port, 8000; 0: any)")
    parser.add_argument("--allow-unauthenticated-public", action="store_true",
                        help="bind a non-loopback address without API keys")


def run(args: argparse.Namespace) -> int:
    from inferline.settings import load_settings

    settings = _with_flags(load_settings(args.settings, env=args.env), args)
    keys = ApiKeys.from_env(settings.server.api_key_env_varnames)
    check_bind(settings.server.host, keys,
               allow_public=settings.server.allow_unauthenticated_public)
    asyncio.run(_serve(settings, keys))
    return 0


def _with_flags(settings: InferlineSettings, args: argparse.Namespace) -> InferlineSettings:
    update: dict[str, Any] = {}
    if args.host is not None:
        update["host"] = args.host
    if args.port is not None:
        update["port"] = args.port
    if args.allow_unauthenticated_public:
        update["allow_unauthenticated_public"] = True
    server = settings.server.model_copy(update=update)
    return settings.model_copy(update={"server": server})


async def _serve(settings: InferlineSettings, keys: ApiKeys) -> None:
    from dependency_injector import providers

    from inferline.containers import Container
    from inferline.server import create_app
    from inferline.server.runner import serve

    container = Container()
    container.settings.override(providers.Object(settings))
    await _maybe_await(container.init_resources())
    engines, pipelines = container.engines(), container.pipelines()
    try:
        for name in pipelines.names():  # a broken pipeline stops the start, not a request
            pipelines.get(name)
        app = create_app(container.chains(), engines, pipelines, settings.server,
                         log_settings=settings.log, keys=keys)
        await serve(app, settings.server.host, settings.server.port,
                    shutdown_grace_s=settings.server.shutdown_grace_s)
    finally:
        await _maybe_await(container.shutdown_resources())  # closes every engine built


async def _maybe_await(result: Any) -> None:
    """dependency-injector returns an awaitable only when some resource is async."""
    if inspect.isawaitable(result):
        await result
