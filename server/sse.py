"""Server-sent events as OpenAI streams them: ``data: {json}`` events, then ``data: [DONE]``.

    sse = SseWriter(request, headers={"x-inferline-engine": "llamacpp"})
    await sse.send({"object": "chat.completion.chunk", ...})
    await sse.done()

An error after the stream has started cannot change the status any more; it is
sent as an ``{"error": {...}}`` event, which the OpenAI SDK raises as ``APIError``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class SseWriter:
    """One event stream; headers go out with the first event."""

    def __init__(self, request: web.Request, headers: dict[str, str] | None = None) -> None:
        self.request = request
        self.response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", **(headers or {})})

    @property
    def started(self) -> bool:
        return self.response.prepared

    async def send(self, data: dict[str, Any]) -> None:
        await self._write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n")

    async def error(self, body: dict[str, Any]) -> None:
        await self.send(body)
        await self.response.write_eof()

    async def done(self) -> None:
        await self._write("data: [DONE]\n\n")
        await self.response.write_eof()

    async def _write(self, text: str) -> None:
        if not self.response.prepared:
            await self.response.prepare(self.request)
        await self.response.write(text.encode())
