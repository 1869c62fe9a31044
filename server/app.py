"""The gateway application: collaborators in, an ``aiohttp`` app out.

    app = create_app(chains, engines, pipelines, settings.server, log_settings=settings.log)
    web.run_app(app, host="127.0.0.1", port=8000)

Middlewares, outermost first: request id, overhead + error translation (every error leaves
as OpenAI-style JSON, Anthropic-style under ``/v1/messages``, never a traceback),
API-key auth, daily spend caps per key (``server.budgets``), then limits (body size,
deadline, concurrency). The catalogs belong to the caller, who closes them.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.log import access_logger
from aiohttp.typedefs import Handler

from inferline.engines import _wait as waits
from inferline.errors import InferlineError
from inferline.server.auth import ApiKeys, auth_middleware
from inferline.server.budgets import BUDGETS, Budgets, SpendStore, budget_middleware
from inferline.server.context import LOG_FIELDS, REQUEST_ID
from inferline.server.errors import ApiError, api_error_for, http_error
from inferline.server.gateway import GATEWAY, Gateway
from inferline.server.limits import InFlight, limits_middleware
from inferline.server.routes import add_routes
from inferline.settings.model import InferlineSettings, LogSettings, ServerSettings

if TYPE_CHECKING:
    from inferline.engines.catalog import EngineCatalog
    from inferline.pipelines.catalog import ChainCatalog, PipelineCatalog

log = structlog.get_logger(__name__)

WORKER_HEADER = "x-inferline-worker"  # the pid of the process that answered
#: milliseconds this request spent in the gateway, not waiting on an engine
OVERHEAD_HEADER = "x-inferline-overhead-ms"


def create_app(chains: ChainCatalog, engines: EngineCatalog, pipelines: PipelineCatalog | None,
               settings: ServerSettings, *, log_settings: LogSettings | None = None,
               keys: ApiKeys | None = None,
               spend_store: SpendStore | None = None) -> web.Application:
    """The gateway over these catalogs. Keys default to those the settings name; spend
    per key is counted in ``spend_store`` (Redis: every replica) or in memory."""
    full = InferlineSettings(server=settings, log=log_settings or LogSettings())
    gateway = Gateway(chains, engines, pipelines, full, InFlight(settings.max_concurrency))
    keys = keys if keys is not None else ApiKeys.from_env(settings.api_key_env_varnames)
    budgets = Budgets(settings.budgets, keys, store=spend_store)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[
        access_middleware, auth_middleware(keys), budget_middleware(budgets),
        limits_middleware(settings, gateway.in_flight)])
    app[GATEWAY], app[BUDGETS] = gateway, budgets
    add_routes(app)
    return app


def app_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The runner to serve the gateway with: requests are logged by ``AccessLog``."""
    return web.AppRunner(app, access_log=access_logger, access_log_class=AccessLog, **kwargs)


class AccessLog(AbstractAccessLogger):
    """One ``http_request`` log event and metric per request, written once the answer is
    on the wire (aiohttp calls this after the last byte), so neither delays the answer."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if REQUEST_ID not in request or not isinstance(request, web.Request):
            return  # a request aiohttp refused before the app saw it
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        request.app[GATEWAY].metrics.observe_request(name, request.method, response.status, time)
        log.info("http_request", request_id=request[REQUEST_ID], method=request.method,
                 path=request.path, status=response.status, duration_ms=round(time * 1000, 1),
                 **request[LOG_FIELDS])


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request's id and the gateway's overhead; errors as JSON."""
    started, waited = time.perf_counter(), waits.start()
    request[REQUEST_ID] = request.headers.get("x-request-id") or secrets.token_hex(16)
    request[LOG_FIELDS] = {}
    response = await _answer(request, handler)
    if waited[0]:  # it called an engine: our own time is the rest
        overhead = time.perf_counter() - started - waited[0]
        request.app[GATEWAY].metrics.overhead.observe(overhead)
        if not response.prepared:  # (a stream's headers left before its end)
            response.headers[OVERHEAD_HEADER] = f"{overhead * 1000:.3f}"
    response.headers.setdefault("x-request-id", request[REQUEST_ID])
    response.headers.setdefault(WORKER_HEADER, str(os.getpid()))  # which of the workers
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path  # the error's shape follows the API: OpenAI's, or Anthropic's
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response(path)
    except web.HTTPException as exc:
        return http_error(exc).response(path)
    except InferlineError as exc:
        return api_error_for(exc).response(path)
    except TimeoutError:
        timeout = request.app[GATEWAY].settings.server.request_timeout_s
        return ApiError(504, f"request took over {timeout}s", code="timeout").response(path)
    except Exception:
        log.exception("request_crashed", request_id=request[REQUEST_ID], path=path)
        return ApiError(500, "internal server error", code="internal_error").response(path)
