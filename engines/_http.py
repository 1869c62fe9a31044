"""HTTP plumbing of the remote engines: per-loop sessions and the one error mapping.

    states = LoopStates(remote_params, injected_session)
    state = states.get()          # session, worker slots and limiter of the running loop
    raise await status_error(resp, engine="openai", scrub=str)   # a non-200 reply
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import email.utils
import json
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from inferline.core.configs import RemoteParams
from inferline.engines._pacing import RateLimiter
from inferline.engines.base import StreamChunk, Usage
from inferline.errors import EngineError, RetryableEngineError, error_for_status

Scrub = Callable[[str], str]

#: error ``type`` names (Anthropic's and OpenAI's) -> the HTTP status they stand for
ERROR_TYPES = {"invalid_request_error": 400, "authentication_error": 401,
               "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
               "rate_limit_error": 429, "api_error": 500, "server_error": 500,
               "overloaded_error": 529}


@dataclass
class LoopState:
    """What must live on one event loop: the session, the worker slots, the limiter."""

    session: aiohttp.ClientSession
    owned: bool  # opened by us, so closed by us
    slots: asyncio.Semaphore
    limiter: RateLimiter


class LoopStates:
    """One ``LoopState`` per event loop an engine runs on (sessions are loop-bound).

    The connector's pool holds ``num_workers`` connections; an injected session
    is used as is and never closed here.
    """

    def __init__(self, params: RemoteParams, session: aiohttp.ClientSession | None) -> None:
        self._params, self._session = params, session
        #: makes each new loop's rate limiter (``share_limits`` swaps in a shared one)
        self.make_limiter: Callable[[], RateLimiter] = lambda: RateLimiter(
            requests_per_minute=params.requests_per_minute,
            tokens_per_minute=params.tokens_per_minute)
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = (
            weakref.WeakKeyDictionary())
        _LIVE.add(self)

    def get(self) -> LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            workers = self._params.num_workers
            session = self._session or aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=workers, ttl_dns_cache=300))
            state = self._states[loop] = LoopState(session, self._session is None,
                                                   asyncio.Semaphore(workers), self.make_limiter())
        return state

    async def aclose(self) -> None:
        """Close the sessions we opened, on whichever loop each belongs to."""
        states, self._states = list(self._states.items()), weakref.WeakKeyDictionary()
        current = asyncio.get_running_loop()
        for loop, state in states:
            if not state.owned or state.session.closed:
                continue
            if loop is current:
                await state.session.close()
            elif loop.is_running():
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(state.session.close(), loop))

    def close_from_outside(self) -> None:
        """Close sessions whose loop runs in another thread (the sync API's portal)."""
        for loop, state in list(self._states.items()):
            if state.owned and not state.session.closed and loop.is_running():
                future = asyncio.run_coroutine_threadsafe(state.session.close(), loop)
                with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                    future.result(timeout=2)


_LIVE: weakref.WeakSet[LoopStates] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """A script that calls ``engine.infer`` and exits leaves no unclosed session behind."""
    for states in list(_LIVE):
        states.close_from_outside()


async def status_error(resp: aiohttp.ClientResponse, *, engine: str,
                       scrub: Scrub) -> EngineError:
    """A non-200 reply as our error, with the server's message and ``Retry-After``."""
    text = error_text((await resp.read()).decode("utf-8", "replace"))
    return error_for_status(resp.status, scrub(text), engine=engine,
                            retry_after=retry_after(resp.headers.get("Retry-After")))


def _is_connect_timeout(exc: BaseException) -> bool:
    """A TCP connect that outlived ``sock_connect``: aiohttp 3.10+ raises its
    ConnectionTimeoutError; older ones a ServerTimeoutError "Connection timeout ..."."""
    return isinstance(exc, getattr(aiohttp, "ConnectionTimeoutError", ())) or (
        isinstance(exc, aiohttp.ServerTimeoutError) and str(exc).startswith("Connection timeout"))


def transport_error(exc: BaseException, params: RemoteParams, *, engine: str,
                    scrub: Scrub) -> RetryableEngineError:
    """A timeout or connection failure (refused, reset, DNS) as a retryable error.

    A connect that timed out names ``connect_timeout``, not the whole-request limit.
    """
    if _is_connect_timeout(exc):
        return RetryableEngineError(f"could not connect within {params.connect_timeout:g}s "
                                    "(remote_params.connect_timeout)", engine=engine)
    if isinstance(exc, asyncio.TimeoutError):
        return RetryableEngineError(f"no complete reply within {params.connection_timeout:g}s "
                                    "(remote_params.connection_timeout)", engine=engine)
    return RetryableEngineError(f"connection failed: {type(exc).__name__}: {scrub(str(exc))}",
                                engine=engine)


def body_error(err: Any, *, engine: str, scrub: Scrub) -> EngineError:
    """An error object inside a 200 reply or stream, mapped by its ``code`` or ``type``.

    Unknown kinds count as server errors (retryable): the request was accepted,
    so the failure happened on the server's side.
    """
    err = err if isinstance(err, dict) else {"message": str(err)}
    code = err.get("code")
    status = code if isinstance(code, int) else ERROR_TYPES.get(str(err.get("type")), 500)
    message = scrub(str(err.get("message") or err))[:500]
    return error_for_status(status, f"error inside a 200 reply: {message}", engine=engine)


def malformed(what: str, raw: bytes | str, exc: Exception, *, engine: str) -> RetryableEngineError:
    """A 200 reply we cannot parse: retryable (most often a proxy cut it short)."""
    kind = "malformed JSON" if isinstance(exc, ValueError) else f"unexpected shape ({exc!r})"
    return RetryableEngineError(f"{kind} in {what}: {raw[:120]!r}", engine=engine, status=200)


def error_text(text: str) -> str:
    """The message out of an ``{"error": {"message": ...}}`` body, else the text, shortened."""
    with contextlib.suppress(ValueError, AttributeError):
        err = json.loads(text).get("error")
        message = err.get("message") if isinstance(err, dict) else err
        text = str(message or text)
    return text.strip()[:500] or "(empty body)"


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(float(value), 0.0)
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def merge_final(final: StreamChunk, chunk: StreamChunk) -> None:
    """Fold a chunk's finish_reason and usage into the stream's last chunk."""
    if chunk.finish_reason:
        final.finish_reason = chunk.finish_reason
    if chunk.usage is not None:
        usage = final.usage or Usage()
        usage.prompt_tokens = chunk.usage.prompt_tokens or usage.prompt_tokens
        usage.completion_tokens = chunk.usage.completion_tokens or usage.completion_tokens
        final.usage = usage
