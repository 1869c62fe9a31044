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
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import orjson
import structlog
from aiohttp import web

from inferline.core.configs import InferenceConfig
from inferline.core.cost import FREE
from inferline.core.types import Conversation
from inferline.engines.base import Completion, Generator, StreamChunk, Usage
from inferline.engines.cache import apply_cache_control
from inferline.errors import AllEnginesFailedError, EngineError, InferlineError
from inferline.server._json import dumps
from inferline.server.budgets import spend
from inferline.server.context import DEADLINE, LOG_FIELDS, REQUEST_ID
from inferline.server.errors import ApiError, api_error_for
from inferline.server.gateway import GATEWAY, Gateway
from inferline.server.openai_api import (
    ChatRequest,
    chunk_body,
    completion_body,
    new_completion_id,
    parse_chat_request,
    public_provenance,
    tool_call_delta,
)
from inferline.server.sse import DONE, SseWriter

log = structlog.get_logger(__name__)

ENGINE_HEADER = "x-inferline-engine"


async def read_json(request: web.Request) -> Any:
    """The decoded body; ``ApiError(400)`` saying where it stops being JSON, or that it is
    nested over 100 levels deep (encoders further on give up: orjson at 255)."""
    raw = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge (413)
    try:  # orjson first (fast); what it refuses, json decides, and words the error
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}",
                           code="invalid_json") from None
        except RecursionError:  # the decoder recurses once per nested [ or {
            raise _too_deep() from None
    level = [body]
    for _ in range(100):  # each pass goes one level down, without recursing
        level = [v for x in level if isinstance(x, (dict, list))
                 for v in (x.values() if isinstance(x, dict) else x)]
        if not level:
            return body
    raise _too_deep()


def _too_deep() -> ApiError:
    return ApiError(400, "the request body is nested too deeply (over 100 levels)",
                    code="invalid_json")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await answer(request, parse_chat_request, completion_body, _Stream)


class ApiRequest(Protocol):
    """What either API's parsed request gives the handler."""

    @property
    def model(self) -> str: ...
    @property
    def stream(self) -> bool: ...
    @property
    def conversation(self) -> Conversation: ...
    @property
    def inference_config(self) -> InferenceConfig: ...


ReqT = TypeVar("ReqT", bound=ApiRequest)


async def answer(request: web.Request, parse: Callable[[Any], ReqT],
                 body: Callable[[str, Completion], dict[str, Any]],
                 stream: Callable[[web.Request, ReqT], StreamRecord]) -> web.StreamResponse:
    """One request of either API through a chain or an engine: the body ``parse``d, then
    streamed through ``stream(request, req)`` or answered whole as ``body(model, completion)``."""
    gw = request.app[GATEWAY]
    req = parse(await read_json(request))
    engine = gw.model(req.model)
    request[LOG_FIELDS].update(model=req.model, stream=req.stream)
    apply_cache_control(request.headers.get("Cache-Control"))  # no-cache, no-store
    if req.stream:
        return await _stream(request, gw, engine, req, stream(request, req))
    async with asyncio.timeout_at(request[DEADLINE]):
        [done] = await engine.agenerate([req.conversation], req.inference_config)
    if not isinstance(done, Completion):
        record_failure(gw, req.model, done)
        raise done
    record_success(request, gw, req.model, req.conversation, done, done.text)
    return web.Response(body=dumps(body(req.model, done)), content_type="application/json",
                        headers={ENGINE_HEADER: done.served_by})


async def _stream(request: web.Request, gw: Gateway, engine: Generator, req: ApiRequest,
                  stream: StreamRecord) -> web.StreamResponse:
    """Feed the engine's chunks to ``stream``, then its closing events. Headers wait for the
    first chunk, so a request that fails before any text (bad parameter, every engine down)
    still gets a JSON error and its status; a failure after it ends the stream with an error
    event."""
    chunks = engine.astream(req.conversation, req.inference_config)
    try:
        async with asyncio.timeout_at(request[DEADLINE]):
            async for chunk in chunks:
                await stream.add(chunk)
                stream.note(chunk)
    except (InferlineError, TimeoutError) as exc:
        if isinstance(exc, InferlineError):
            record_failure(gw, req.model, exc)
        if not stream.sse.started:
            raise
        error = (api_error_for(exc) if isinstance(exc, InferlineError) else
                 ApiError(504, "request timed out mid-stream", code="timeout"))
        log.warning("stream_failed", request_id=request[REQUEST_ID],
                    status=error.status, error=error.message)
        request[LOG_FIELDS].update(stream_error=error.code)
        return await stream.sse.close(error.body_for(request.path))
    except ConnectionResetError:  # the client went away; nothing left to tell it
        log.info("client_disconnected", request_id=request[REQUEST_ID])
        return stream.sse.response
    finally:
        await chunks.aclose()
    done = stream.done(engine.name)
    served = record_success(request, gw, req.model, req.conversation, done, "".join(stream.text))
    return await stream.finish(done, served)


class StreamRecord(ABC):
    """One streamed answer of either API: its SSE writer, what it has said so far (its
    text), and its finish reason, usage and provenance as they arrive. Each API's subclass
    writes its events: a chunk's in ``add``, the closing ones in ``finish``."""

    def __init__(self, sse: SseWriter) -> None:
        self.sse = sse
        self.text: list[str] = []
        self.last = StreamChunk()

    @abstractmethod
    async def add(self, chunk: StreamChunk) -> None:
        """Send this chunk's events."""

    @abstractmethod
    async def finish(self, done: Completion, served: dict[str, Any]) -> web.StreamResponse:
        """Send the closing events (finish reason, usage, provenance) and end the stream."""

    def note(self, chunk: StreamChunk) -> None:
        last = self.last
        last.served_by = chunk.served_by or last.served_by
        last.finish_reason = chunk.finish_reason or last.finish_reason
        last.usage = chunk.usage or last.usage
        last.attempts = chunk.attempts or last.attempts
        last.cost = chunk.cost or last.cost

    def done(self, default_engine: str) -> Completion:
        """What was streamed, as a completion (for provenance and metrics)."""
        last = self.last
        return Completion("", last.finish_reason, last.usage or Usage(),
                          last.served_by or default_engine, last.attempts or [],
                          cost=last.cost or FREE)


class _Stream(StreamRecord):
    """A streamed chat completion: OpenAI's ``chat.completion.chunk`` events."""

    def __init__(self, request: web.Request, req: ChatRequest) -> None:
        super().__init__(SseWriter(request))
        self.req = req
        self.cid, self.created = new_completion_id(), int(time.time())

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return chunk_body(self.cid, self.created, self.req.model, delta, finish)

    def _start(self, served_by: str) -> list[dict[str, Any]]:
        """The role chunk that opens the stream, if it is not open yet."""
        if self.sse.started:
            return []
        self.sse.response.headers[ENGINE_HEADER] = served_by
        return [self._chunk({"role": "assistant", "content": ""})]

    async def add(self, chunk: StreamChunk) -> None:
        events = self._start(chunk.served_by or "")
        if chunk.text:
            self.text.append(chunk.text)
            events.append(self._chunk({"content": chunk.text}))
        if chunk.tool_calls:
            events.append(self._chunk({"tool_calls": [tool_call_delta(d)
                                                      for d in chunk.tool_calls]}))
        if events:
            await self.sse.send(*events)

    async def finish(self, done: Completion, served: dict[str, Any]) -> web.StreamResponse:
        events = self._start(done.served_by)  # (an engine that said nothing at all)
        last = self._chunk({}, done.finish_reason or "stop")
        events.append({**last, "inferline": public_provenance(served)})
        if self.req.include_usage:
            events.append({**self._chunk({}), "choices": [], "usage": served["usage"]})
        return await self.sse.close(*events, end=DONE)


def record_success(request: web.Request, gw: Gateway, model: str, conversation: Conversation,
                   done: Completion, answer: str) -> dict[str, Any]:
    """Metrics, spend and log fields for a served request, and its text only with
    ``log.log_prompts``; its provenance."""
    served = done.provenance()
    gw.metrics.observe_attempts(model, served["attempts"])
    gw.metrics.observe_usage(served["served_by"], served["usage"])
    spend(request, served["served_by"], served["cost"])
    request[LOG_FIELDS].update(served_by=served["served_by"],
                               attempts=len(served["attempts"]), usage=served["usage"])
    if gw.settings.log.log_prompts:
        log.info("exchange", request_id=request[REQUEST_ID], model=model, answer=answer,
                 messages=[{"role": m.role.value, "text": m.text} for m in conversation.messages])
    return served


def record_failure(gw: Gateway, model: str, exc: InferlineError) -> None:
    if isinstance(exc, AllEnginesFailedError):
        gw.metrics.observe_attempts(model, [a.as_dict() for a in exc.attempts])
    elif isinstance(exc, EngineError):
        gw.metrics.observe_attempts(model, [{"engine": exc.engine or model,
                                             "error": type(exc).__name__}])
