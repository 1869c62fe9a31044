"""The gateway's routes other than chat and messages: pipelines, models, health, readiness,
metrics.

    add_routes(app)   # registers every route, chat and messages included
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from inferline.errors import InferlineError
from inferline.server.budgets import spend
from inferline.server.chat import (
    ENGINE_HEADER,
    chat_completions,
    read_json,
    record_failure,
)
from inferline.server.context import DEADLINE, LOG_FIELDS
from inferline.server.errors import ApiError
from inferline.server.gateway import GATEWAY
from inferline.server.messages import messages
from inferline.server.readiness import readiness


async def run_pipeline(request: web.Request) -> web.Response:
    """``POST /v1/pipelines/{name}``: a JSON object (one row) in, the output row out."""
    gw = request.app[GATEWAY]
    name = request.match_info["name"]
    pipeline = gw.pipeline(name)
    row = await read_json(request)
    if not isinstance(row, dict):
        raise ApiError(400, "the request body must be a JSON object (one input row)",
                       code="invalid_body")
    request[LOG_FIELDS].update(pipeline=name)
    try:
        async with asyncio.timeout_at(request[DEADLINE]):
            out = await pipeline.arun(row)
    except InferlineError as exc:
        record_failure(gw, f"pipeline:{name}", exc)
        raise
    meta = out.get("_meta") or {}
    served_by = meta.get("served_by") or ""
    gw.metrics.observe_attempts(f"pipeline:{name}", meta.get("attempts") or [])
    gw.metrics.observe_usage(served_by, meta.get("usage"))
    spend(request, served_by, meta.get("cost") or 0.0)  # a row's cost, under its last engine
    request[LOG_FIELDS].update(served_by=served_by)
    return web.json_response(out, headers={ENGINE_HEADER: served_by} if served_by else None)


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: chains, engines and pipelines, in OpenAI's list format."""
    gw = request.app[GATEWAY]
    kinds = [("chain", gw.chains.names()), ("engine", gw.engines.names()),
             ("pipeline", gw.pipelines.names() if gw.pipelines is not None else [])]
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "inferline",
             "inferline": {"kind": kind}} for kind, names in kinds for name in names]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: the process is up and its loop answers."""
    return web.json_response({"status": "ok", "time": time.time()})


async def ready(request: web.Request) -> web.Response:
    """``GET /ready``: each engine's state; 503 when no engine can serve."""
    gw = request.app[GATEWAY]
    body = await readiness(gw.engines, gw.chains)
    return web.json_response(body, status=200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format."""
    gw = request.app[GATEWAY]
    gw.metrics.in_flight.set(gw.in_flight.count)
    return web.Response(body=gw.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/pipelines/{name}", run_pipeline)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
