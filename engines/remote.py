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
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

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

    # -- one request: the one send path, and the one retry loop over it ----------

    async def _exchange(self, conversation: Conversation, base: Body, state: LoopState, *,
                        stream: bool) -> AsyncIterator[Completion | StreamChunk]:
        """One conversation's request, the one send path: a ``Completion``, or the
        stream's chunks (the last with finish_reason and usage).

        Transient failures before anything was yielded are retried (after back-off);
        after that the error is raised, since the caller already holds part of the
        answer. After each success the worker rests ``politeness_policy`` seconds.
        """
        data = orjson.dumps(self._body(conversation, base))
        estimate = self._estimate_tokens(conversation, base) if state.limiter.active else 0
        pause, attempt = self.remote_params.politeness_policy, 0
        while True:
            used = sent = 0
            try:
                if estimate:
                    await state.limiter.acquire(estimate)
                async with state.slots:
                    await self._refresh_auth()
                    try:
                        began = time.perf_counter()
                        async with state.session.post(
                                self.api_url, data=aiohttp.BytesPayload(data, content_type=_JSON),
                                headers=self._headers(), timeout=self._timeout) as resp:
                            if resp.status != 200:
                                raise await status_error(resp, engine=self.name, scrub=self._scrub)
                            if not stream:
                                raw = await resp.read()
                                waits.add(time.perf_counter() - began)
                                done = self._parse(raw)
                                sent, used = 1, _tokens(done)
                                yield done
                            else:
                                waits.add(time.perf_counter() - began)  # to the headers
                                async for chunk in self._chunks(resp):
                                    sent, used = sent + 1, _tokens(chunk) or used
                                    yield chunk
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        raise transport_error(exc, self.remote_params, engine=self.name,
                                              scrub=self._scrub) from exc
                    if pause:
                        await asyncio.sleep(pause)
                state.limiter.settle(estimate, used)
                return
            except EngineError as exc:
                state.limiter.settle(estimate, 0)  # a failed try hands its tokens back
                if sent or not isinstance(exc, RetryableEngineError):
                    raise
                attempt += 1
                await self._before_retry(exc, attempt)

    async def _chunks(self, resp: aiohttp.ClientResponse) -> AsyncIterator[StreamChunk]:
        """The text of an SSE reply as it arrives, then one chunk with finish_reason and usage."""
        final, calls = StreamChunk(), dict[int, int]()  # a protocol's call index -> 0, 1, ...
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
        if final.finish_reason is None:
            raise RetryableEngineError("stream ended before the answer finished", engine=self.name)
        if calls and final.finish_reason == "stop":  # a forced call (named tool_choice)
            final.finish_reason = "tool_calls"
        yield final

    async def _complete(self, conversation: Conversation, base: Body,
                        state: LoopState) -> Completion | EngineError:
        done = None
        try:
            # run the exchange to its end: that releases the slot and settles the limiter
            async for item in self._exchange(conversation, base, state, stream=False):
                done = item
        except EngineError as exc:
            return exc
        assert isinstance(done, Completion)
        return done

    async def _before_retry(self, exc: RetryableEngineError, attempt: int) -> None:
        """Sleep before retry ``attempt``, or re-raise once retries are spent."""
        params = self.remote_params
        if attempt > params.max_retries:
            log.warning("remote_request_failed", engine=self.name, attempts=attempt,
                        status=exc.status, error=exc.message)
            raise exc
        delay = max(params.politeness_policy, backoff_delay(
            attempt, base=params.retry_backoff_base, cap=params.retry_backoff_max,
            retry_after=exc.retry_after))
        log.info("remote_retry", engine=self.name, attempt=attempt, status=exc.status,
                 delay_s=round(delay, 3), error=exc.message)
        await asyncio.sleep(delay)

    def _parse(self, raw: bytes) -> Completion:
        try:
            return self._completion(orjson.loads(raw))
        except _PARSE_ERRORS as exc:
            raise malformed("a 200 reply", raw, exc, engine=self.name) from exc

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
        state, base = self._states.get(), self._request_base(params, stream=True)
        async for chunk in self._exchange(conversation, base, state, stream=True):
            yield chunk  # type: ignore[misc]


def _tokens(item: Completion | StreamChunk) -> int:
    usage = item.usage
    return usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
