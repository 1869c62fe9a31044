"""Request limits: body size, a per-request deadline, and bounded concurrency.

    app.middlewares.append(limits_middleware(settings.server, gateway.in_flight))

Inference routes (``/v1/chat/...``, ``/v1/messages``, ``/v1/pipelines/...``) count against
``max_concurrency``; one more is answered at once with 429 and ``Retry-After``
rather than queued, so a saturated server sheds load instead of piling it up.
Handlers bound their work with ``asyncio.timeout_at(request[DEADLINE])``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from inferline.server.context import DEADLINE
from inferline.server.errors import ApiError
from inferline.settings.model import ServerSettings

LIMITED_PREFIXES = ("/v1/chat/", "/v1/messages", "/v1/pipelines/")
RETRY_AFTER_S = 1


class InFlight:
    """Counts inference requests in flight, up to a bound."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0

    def try_enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1


def limits_middleware(settings: ServerSettings, in_flight: InFlight) -> Middleware:
    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[DEADLINE] = asyncio.get_running_loop().time() + settings.request_timeout_s
        size = request.content_length
        if size is not None and size > settings.max_body_bytes:
            raise ApiError(413, f"request body of {size} bytes is over the limit of "
                           f"{settings.max_body_bytes}", code="request_too_large")
        if not request.path.startswith(LIMITED_PREFIXES):
            return await handler(request)
        if not in_flight.try_enter():
            raise ApiError(429, f"server busy: {in_flight.limit} requests in flight; retry later",
                           code="server_busy", headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            return await handler(request)
        finally:
            in_flight.leave()
    return limit
