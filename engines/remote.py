"""The machinery every HTTP engine shares, written once.

A protocol subclass (OpenAI chat completions, Anthropic messages) supplies the
request body, the response parser and the stream-event parser; this base runs
them: one pooled aiohttp session per engine and event loop, ``num_workers``
requests in flight, optional request/token rate limits and a politeness pause,
retries with exponential back-off and jitter that honour ``Retry-After``, a
whole-request timeout (``connection_timeout``) separate from the TCP connect
timeout (``connect_timeout``), and HTTP failures mapped onto the error tree::

    429 408 409 5xx, timeouts, refused/reset connections,
    a malformed or truncated body in a 200 reply       -> RetryableEngineError
    400 401 403 404 422 (other 4xx)                    -> FatalEngineError
    API key variable unset                             -> EngineUnavailableError

Retryable errors are retried here ``max_retries`` times, then raised, so a
fallback chain moves on. A body that is not JSON counts as transient: it is
most often a proxy or load balancer cutting a reply short.

    engine = RemoteInferenceEngine(ModelParams(model_name="m"),
                                   remote_params=RemoteParams(api_url=url, num_workers=64))
    outcomes = await engine.agenerate(conversations)   # a Completion or an error per row
"""

from __future__ import annotations

import asyncio
import os
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

import aiohttp
import orjson
import structlog

from inferline.core.configs import GenerationParams, ModelParams, RemoteParams
from inferline.core.types import Conversation
from inferline.engines import _wait as waits
from inferline.engines._http import (
    LoopState,
    LoopStates,
    body_error,
    malformed,
    merge_final,
    status_error,
    transport_error,
)
from inferline.engines._pacing import RateLimiter, backoff_delay
from inferline.engines._pool import run_pool
from inferline.engines._sse import iter_sse
from inferline.engines.base import BaseInferenceEngine, Completion, StreamChunk
from inferline.errors import (
    ConfigurationError,
    EngineError,
    EngineUnavailableError,
    RetryableEngineError,
)

log = structlog.get_logger(__name__)

Body = dict[str, Any]
_PARSE_ERRORS = (ValueError, KeyError, TypeError, IndexError, AttributeError)
T = TypeVar("T")
_JSON = "application/json"  # on the serialised body's payload: no Content-Type header per request


class StreamEnd(Exception):
    """Raised by a protocol's ``_stream_event`` at the stream's end marker."""


class BaseRemoteEngine(BaseInferenceEngine):
    """Base of the HTTP engines; subclasses implement the protocol hooks below."""

    can_stream = True
    supports_images = True
    #: used when ``remote_params.api_url`` / ``api_key_env_varname`` are not set
    default_api_url: ClassVar[str | None] = None
    default_api_key_env: ClassVar[str | None] = None

    def __init__(self, model_params: ModelParams, *,
                 generation_params: GenerationParams | None = None,
                 remote_params: RemoteParams | None = None, name: str | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(model_params, generation_params=generation_params, name=name)
        self.remote_params = self._with_defaults(remote_params or RemoteParams())
        if not self.remote_params.api_url:
            raise ConfigurationError(f"{type(self).__name__} needs an API URL",
                                     key="remote_params.api_url")
        self.api_url = self._endpoint(self.remote_params.api_url)
        self._states = LoopStates(self.remote_params, session)
        self._timeout = aiohttp.ClientTimeout(total=self.remote_params.connection_timeout,
                                              sock_connect=self.remote_params.connect_timeout)
        self._key: str | None = None
        self._key_headers = self._request_headers(None)

    def _with_defaults(self, params: RemoteParams) -> RemoteParams:
        update: dict[str, Any] = {}
        if params.api_url is None and self.default_api_url:
            update["api_url"] = self.default_api_url
        if "api_key_env_varname" not in params.model_fields_set and self.default_api_key_env:
            update["api_key_env_varname"] = self.default_api_key_env
        return params.model_copy(update=update) if update else params

    # -- protocol hooks -----------------------------------------------------------

    @classmethod
    def _endpoint(cls, api_url: str) -> str:
        """The URL requests go to, from the configured ``api_url``."""
        return api_url

    def _request_headers(self, key: str | None) -> dict[str, str]:
        """The headers every request carries for ``key`` (Content-Type goes with the body)."""
        return {"Authorization": f"Bearer {key}"} if key else {}

    @abstractmethod
    def _request_base(self, params: GenerationParams, *, stream: bool) -> Body:
        """The body fields shared by every conversation of one call (model, sampling)."""

    @abstractmethod
    def _body(self, conversation: Conversation, base: Body) -> Body:
        """One conversation's request body, on top of ``base``."""

    @abstractmethod
    def _completion(self, body: Any) -> Completion:
        """Parse a 200 reply; raise ``KeyError``/``TypeError``/``IndexError`` on a bad shape."""

    @abstractmethod
    def _stream_event(self, event: str, data: str) -> StreamChunk | None:
        """One SSE event -> a chunk, or None to skip it; ``StreamEnd`` at the end marker.

        Raises an ``EngineError`` for an error event.
        """

    # -- lifecycle ----------------------------------------------------------------

    def preflight(self) -> None:
        self._api_key()

    def _api_key(self) -> str | None:
        """The key, read now from the named variable; unset -> ``EngineUnavailableError``."""
        var = self.remote_params.api_key_env_varname
        if not var:
            return None
        key = os.environ.get(var)
        if not key:
            raise EngineUnavailableError(f"API key variable {var} is not set", engine=self.name)
        return key

    async def _refresh_auth(self) -> None:
        """Runs before each request: engines with expiring credentials renew them here."""

    def _headers(self) -> dict[str, str] | None:
        """Built once per key value; the key is read from the environment on every call."""
        key = self._api_key()
        if key != self._key:
            self._key = key
            self._key_headers = self._request_headers(key)
        return self._key_headers or None

    async def aclose(self) -> None:
        """Close the sessions this engine opened (on every loop it ran on)."""
        await self._states.aclose()

    def share_limits(self, make: Callable[[], RateLimiter]) -> None:
        """Take each loop's rate limiter from ``make``: a request/token budget shared beyond
        this process (gateway replicas, through Redis: ``server/state.py``)."""
        self._states.make_limiter = make

    # -- one request: one send, one retry loop over it ------------------------------

    async def _send(self, data: bytes, state: LoopState, *, stream: bool) -> aiohttp.ClientResponse:
        """POST ``data`` once, like httpx's ``Client.send``: the 200 response, its body read
        unless ``stream`` (then ``_chunks`` reads and releases it). A non-200 reply or a
        failed transport raises the mapped ``EngineError``."""
        await self._refresh_auth()
        began = time.perf_counter()
        try:
            resp = await state.session.post(
                self.api_url, data=aiohttp.BytesPayload(data, content_type=_JSON),
                headers=self._headers(), timeout=self._timeout)
            if resp.status != 200:
                raise await status_error(resp, engine=self.name, scrub=self._scrub)
            if not stream:
                await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from exc
        waits.add(time.perf_counter() - began)  # to the whole body, or to a stream's headers
        return resp

    async def _retrying(self, attempt: Callable[[bytes, LoopState], Awaitable[T]],
                        conversation: Conversation, base: Body, state: LoopState) -> tuple[T, int]:
        """``attempt`` on the conversation's body under the rate limits, retried while it fails
        transiently (``max_retries`` times, after a back-off that honours ``Retry-After``);
        its result, and the tokens reserved for it (to settle)."""
        params, tries = self.remote_params, 0
        data = orjson.dumps(self._body(conversation, base))
        estimate = self._estimate_tokens(conversation, base) if state.limiter.active else 0
        while True:
            if state.limiter.active:
                await state.limiter.acquire(estimate)
            try:
                return await attempt(data, state), estimate
            except EngineError as exc:
                state.limiter.settle(estimate, 0)  # a failed try hands its tokens back
                if not isinstance(exc, RetryableEngineError):
                    raise
                tries += 1
                if tries > params.max_retries:
                    log.warning("remote_request_failed", engine=self.name, attempts=tries,
                                status=exc.status, error=exc.message)
                    raise
                delay = max(params.politeness_policy, backoff_delay(
                    tries, base=params.retry_backoff_base, cap=params.retry_backoff_max,
                    retry_after=exc.retry_after))
                log.info("remote_retry", engine=self.name, attempt=tries, status=exc.status,
                         delay_s=round(delay, 3), error=exc.message)
            await asyncio.sleep(delay)

    async def _request(self, data: bytes, state: LoopState) -> Completion:
        return self._parse(await (await self._send(data, state, stream=False)).read())

    async def _open_stream(self, data: bytes, state: LoopState,
                           ) -> tuple[StreamChunk, AsyncGenerator[StreamChunk, None]]:
        """Send, and read up to the first chunk: failures until then are retried."""
        chunks = self._chunks(await self._send(data, state, stream=True))
        return await anext(chunks), chunks

    async def _complete(self, conversation: Conversation, base: Body,
                        state: LoopState) -> Completion | EngineError:
        """A request holds its worker slot from its first try (back-off included) to the
        ``politeness_policy`` pause after its success."""
        try:
            async with state.slots:
                done, estimate = await self._retrying(self._request, conversation, base, state)
                state.limiter.settle(estimate, _tokens(done))
                await self._rest()
        except EngineError as exc:
            return exc
        return done

    async def _chunks(self, resp: aiohttp.ClientResponse) -> AsyncGenerator[StreamChunk, None]:
        """The text of an SSE reply as it arrives, then one chunk with finish_reason and usage."""
        final, calls = StreamChunk(), dict[int, int]()  # a protocol's call index -> 0, 1, ...
        try:
            async for event, payload in waits.timed(iter_sse(resp.content)):
                try:
                    chunk = self._stream_event(event, payload)
                except StreamEnd:
                    break
                except _PARSE_ERRORS as exc:
                    raise malformed("a stream event", payload, exc, engine=self.name) from exc
                if chunk is None:
                    continue
                merge_final(final, chunk)
                for delta in chunk.tool_calls or ():
                    delta.index = calls.setdefault(delta.index, len(calls))
                if chunk.text or chunk.tool_calls:
                    yield StreamChunk(chunk.text, tool_calls=chunk.tool_calls)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from exc
        finally:
            resp.release()
        if final.finish_reason is None:
            raise RetryableEngineError("stream ended before the answer finished", engine=self.name)
        if calls and final.finish_reason == "stop":  # a forced call (named tool_choice)
            final.finish_reason = "tool_calls"
        yield final

    async def _rest(self) -> None:
        """The ``politeness_policy`` pause after each success, still in the worker slot."""
        if pause := self.remote_params.politeness_policy:
            await asyncio.sleep(pause)

    def _parse(self, raw: bytes) -> Completion:
        try:
            return self._completion(orjson.loads(raw))
        except _PARSE_ERRORS as exc:
            raise malformed("a 200 reply", raw, exc, engine=self.name) from exc

    def _transport_error(self, exc: BaseException) -> RetryableEngineError:
        return transport_error(exc, self.remote_params, engine=self.name, scrub=self._scrub)

    def _event_error(self, err: Any) -> EngineError:
        """An error object inside a 200 reply or stream (see ``_http.body_error``)."""
        return body_error(err, engine=self.name, scrub=self._scrub)

    def _scrub(self, text: str) -> str:
        """Never echo a key back, even if a server put it in an error message."""
        return text.replace(self._key, "***") if self._key else text

    @staticmethod
    def _estimate_tokens(conversation: Conversation, base: Body) -> int:
        chars = sum(len(m.text) for m in conversation.messages)
        return chars // 4 + int(base.get("max_tokens") or base.get("max_completion_tokens") or 0)

    # -- the backend hooks: many requests, one stream ---------------------------------

    async def _agenerate(self, conversations: Sequence[Conversation],
                         params: GenerationParams) -> list[Completion | EngineError]:
        """A completion, or the ``EngineError`` that ended it, per conversation;
        ``num_workers`` requests in flight."""
        base, state = self._request_base(params, stream=False), self._states.get()
        if len(conversations) == 1:  # one row (a gateway request): no pool, no task
            return [await self._complete(conversations[0], base, state)]
        out: list[Any] = [None] * len(conversations)

        async def job(i: int) -> None:
            # any other exception is a bug or bad input, not a row failure: it propagates
            out[i] = await self._complete(conversations[i], base, state)

        await run_pool(len(conversations), self.remote_params.num_workers, job)
        return out

    async def _astream(self, conversation: Conversation,
                       params: GenerationParams) -> AsyncIterator[StreamChunk]:
        """Text as it arrives; failures before the first chunk are retried, later ones
        raise (the caller already holds part of the answer)."""
        state, base = self._states.get(), self._request_base(params, stream=True)
        async with state.slots:
            (first, rest), estimate = await self._retrying(self._open_stream, conversation, base,
                                                           state)
            last, used = first, 0
            try:
                yield first
                async for last in rest:
                    yield last
                used = _tokens(last)
            finally:
                await rest.aclose()
                state.limiter.settle(estimate, used)  # a broken stream hands its tokens back
            await self._rest()


def _tokens(item: Completion | StreamChunk) -> int:
    usage = item.usage
    return usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
