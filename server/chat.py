"""``POST /v1/chat/completions``: one conversation through a chain or an engine.

    curl -s localhost:8000/v1/chat/completions -H 'Authorization: Bearer $KEY' \
         -d '{"model": "default", "messages": [{"role": "user", "content": "Hi"}]}'

The answer names the engine that served it twice: the ``x-inferline-engine``
header, and an ``inferline`` field (``served_by``, ``attempts``) that OpenAI
clients ignore but keep (``completion.model_extra["inferline"]`` in the SDK).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog
from aiohttp import web

from inferline.core.types import Conversation
from inferline.engines.base import BaseInferenceEngine, StreamChunk
from inferline.errors import AllEnginesFailedError, Attempt, EngineError, InferlineError
from inferline.server.context import DEADLINE, LOG_FIELDS, REQUEST_ID
from inferline.server.errors import ApiError, api_error_for
from inferline.server.gateway import GATEWAY, Gateway
from inferline.server.openai_api import (
    ChatRequest,
    chunk_body,
    completion_body,
    new_completion_id,
    parse_chat_request,
    usage_dict,
)
from inferline.server.sse import SseWriter

log = structlog.get_logger(__name__)

ENGINE_HEADER = "x-inferline-engine"


async def read_json(request: web.Request) -> Any:
    """The decoded body; ``ApiError(400)`` saying where it stops being JSON."""
    raw = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge (413)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}",
                       code="invalid_json") from None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    req = parse_chat_request(await read_json(request))
    engine = gw.model(req.model)
    request[LOG_FIELDS].update(model=req.model, stream=req.stream)
    if req.stream:
        return await stream_chat(request, gw, engine, req)
    started = time.monotonic()
    try:
        async with asyncio.timeout_at(request[DEADLINE]):
            [out] = await engine.ainfer([req.conversation], req.inference_config)
    except InferlineError as exc:
        record_failure(gw, req.model, exc)
        raise
    served = served_info(engine, out.metadata, time.monotonic() - started)
    record_success(request, gw, req, served, out.metadata.get("usage"))
    log_exchange(request, gw, req, out.last_message().text if out.last_message() else "")
    return web.json_response(completion_body(req.model, out, served),
                             headers={ENGINE_HEADER: served["served_by"]})


async def stream_chat(request: web.Request, gw: Gateway, engine: BaseInferenceEngine,
                      req: ChatRequest) -> web.StreamResponse:
    """Stream as OpenAI chunks. Headers wait for the first chunk, so a request that fails
    before any text (bad parameter, every engine down) still gets a JSON error and status."""
    started, stream = time.monotonic(), _Stream(request, req)
    chunks = engine.astream(req.conversation, req.inference_config)
    try:
        async with asyncio.timeout_at(request[DEADLINE]):
            async for chunk in chunks:
                await stream.add(chunk, engine)
    except (InferlineError, TimeoutError) as exc:
        if isinstance(exc, InferlineError):
            record_failure(gw, req.model, exc)
        if not stream.sse.started:
            raise
        return await stream.fail(exc)
    except ConnectionResetError:  # the client went away; nothing left to tell it
        log.info("client_disconnected", request_id=request[REQUEST_ID])
        return stream.sse.response
    finally:
        await chunks.aclose()
    served = served_info(engine, stream.metadata(), time.monotonic() - started)
    record_success(request, gw, req, served, stream.usage)
    log_exchange(request, gw, req, "".join(stream.text))
    return await stream.finish(served)


class _Stream:
    """One streamed answer: its SSE writer and what it has said so far."""

    def __init__(self, request: web.Request, req: ChatRequest) -> None:
        self.request, self.req = request, req
        self.cid, self.created = new_completion_id(), int(time.time())
        self.sse = SseWriter(request)
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None
        self.served_by: str | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return chunk_body(self.cid, self.created, self.req.model, delta, finish)

    async def add(self, chunk: StreamChunk, engine: BaseInferenceEngine) -> None:
        if not self.sse.started:
            self.served_by = _chunk_engine(chunk, engine)
            self.sse.response.headers[ENGINE_HEADER] = self.served_by
            await self.sse.send(self._chunk({"role": "assistant", "content": ""}))
        if chunk.text:
            self.text.append(chunk.text)
            await self.sse.send(self._chunk({"content": chunk.text}))
        self.finish_reason = chunk.finish_reason or self.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage.as_dict()

    def metadata(self) -> dict[str, Any]:
        return {"served_by": self.served_by} if self.served_by else {}

    async def finish(self, served: dict[str, Any]) -> web.StreamResponse:
        if not self.sse.started:  # an engine that said nothing at all
            self.sse.response.headers[ENGINE_HEADER] = served["served_by"]
            await self.sse.send(self._chunk({"role": "assistant", "content": ""}))
        last = self._chunk({}, self.finish_reason or "stop")
        await self.sse.send({**last, "inferline": served})
        if self.req.include_usage:
            await self.sse.send({**self._chunk({}), "choices": [],
                                 "usage": self.usage or usage_dict(0, 0)})
        await self.sse.done()
        return self.sse.response

    async def fail(self, exc: InferlineError | TimeoutError) -> web.StreamResponse:
        error = (api_error_for(exc) if isinstance(exc, InferlineError) else
                 ApiError(504, "request timed out mid-stream", code="timeout"))
        log.warning("stream_failed", request_id=self.request[REQUEST_ID],
                    status=error.status, error=error.message)
        self.request[LOG_FIELDS].update(stream_error=error.code)
        await self.sse.error(error.body())
        return self.sse.response


def _chunk_engine(chunk: StreamChunk, engine: BaseInferenceEngine) -> str:
    """The engine that produced ``chunk``: a chain's chunks may name it, else ``engine``."""
    return getattr(chunk, "engine", None) or engine.name


def served_info(engine: BaseInferenceEngine, metadata: dict[str, Any],
                latency_s: float) -> dict[str, Any]:
    """``served_by`` and ``attempts``: a chain records both; a plain engine made one try."""
    served_by = metadata.get("served_by") or metadata.get("engine") or engine.name
    attempts = metadata.get("attempts") or [Attempt(served_by, None, None, latency_s).as_dict()]
    return {"served_by": served_by, "attempts": attempts}


def record_success(request: web.Request, gw: Gateway, req: ChatRequest,
                   served: dict[str, Any], usage: dict[str, int] | None) -> None:
    gw.metrics.observe_attempts(req.model, served["attempts"])
    gw.metrics.observe_usage(served["served_by"], usage)
    request[LOG_FIELDS].update(served_by=served["served_by"],
                               attempts=len(served["attempts"]), usage=usage)


def record_failure(gw: Gateway, model: str, exc: InferlineError) -> None:
    if isinstance(exc, AllEnginesFailedError):
        gw.metrics.observe_attempts(model, [a.as_dict() for a in exc.attempts])
    elif isinstance(exc, EngineError):
        gw.metrics.observe_attempts(model, [{"engine": exc.engine or model,
                                             "error": type(exc).__name__}])


def log_exchange(request: web.Request, gw: Gateway, req: ChatRequest, answer: str) -> None:
    """Prompt and answer text, only when ``log.log_prompts`` is on."""
    if gw.settings.log.log_prompts:
        conv: Conversation = req.conversation
        log.info("chat_exchange", request_id=request[REQUEST_ID],
                 messages=[{"role": m.role.value, "text": m.text} for m in conv.messages],
                 answer=answer)
