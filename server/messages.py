"""``POST /v1/messages``: Anthropic's Messages API over the same chains and engines as chat.

    client = anthropic.Anthropic(base_url="http://127.0.0.1:8000", api_key=KEY)
    client.messages.create(model="default", max_tokens=64,
                           messages=[{"role": "user", "content": "Hi"}])

Which fields are taken is in ``anthropic_api``. As on chat, the serving engine comes back
in the ``x-inferline-engine`` header and an ``inferline`` field
(``message.model_extra["inferline"]`` in the SDK; streamed, in the ``message_delta``
event). Errors are in Anthropic's shape (``ApiError.body_for``); one after the
stream has started is an ``event: error``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from inferline.core.types import ToolCallDelta
from inferline.engines.base import Completion, StreamChunk
from inferline.server._json import dumps
from inferline.server.anthropic_api import (
    MESSAGE_STOP,
    TEXT_BLOCK_START,
    MessagesRequest,
    block_start,
    block_stop,
    input_json_delta,
    message_body,
    message_delta,
    message_start,
    parse_messages_request,
    text_delta,
)
from inferline.server.chat import ENGINE_HEADER, StreamRecord, answer
from inferline.server.sse import SseWriter


async def messages(request: web.Request) -> web.StreamResponse:
    """The route's handler: one Messages request through a chain or an engine."""
    return await answer(request, parse_messages_request, message_body, _MessageStream)


class _EventWriter(SseWriter):
    """Anthropic's SSE: every event is named by its ``type`` (the SDK skips unnamed ones)."""

    @staticmethod
    def _encode(data: dict[str, Any]) -> bytes:
        return f"event: {data['type']}\ndata: ".encode() + dumps(data) + b"\n\n"


class _MessageStream(StreamRecord):
    """A streamed message: Anthropic's events, and which content block is open."""

    def __init__(self, request: web.Request, req: MessagesRequest) -> None:
        super().__init__(_EventWriter(request))
        self.model = req.model
        self.index, self.in_text = 0, True  # the open content block (text block 0 at first)
        self.calls: dict[int, int] = {}  # a tool call's index -> its content block's index

    def _open(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        """The events that close the open content block and start ``block`` after it."""
        self.index += 1
        return [block_stop(self.index - 1), block_start(self.index, block)]

    def _calls(self, deltas: list[ToolCallDelta]) -> list[dict[str, Any]]:
        """Each tool call as a ``tool_use`` block; its arguments as ``input_json_delta``s."""
        events = []
        for delta in deltas:
            if delta.id is not None:  # a call's first piece: its block, the input to follow
                events += self._open({"type": "tool_use", "id": delta.id, "name": delta.name,
                                      "input": {}})
                self.calls[delta.index], self.in_text = self.index, False
            if delta.arguments:
                events.append(input_json_delta(self.calls[delta.index], delta.arguments))
        return events

    def _start(self, served_by: str) -> list[dict[str, Any]]:
        """The events that open the message, if it is not open yet."""
        if self.sse.started:
            return []
        self.sse.response.headers[ENGINE_HEADER] = served_by
        return [message_start(self.model), TEXT_BLOCK_START]

    async def add(self, chunk: StreamChunk) -> None:
        events = self._start(chunk.served_by or "")
        if chunk.text:
            if not self.in_text:  # text after a tool call: a new text block
                events += self._open({"type": "text", "text": ""})
                self.in_text = True
            self.text.append(chunk.text)
            events.append(text_delta(chunk.text, self.index))
        if chunk.tool_calls:
            events += self._calls(chunk.tool_calls)
        if events:
            await self.sse.send(*events)

    async def finish(self, done: Completion, served: dict[str, Any]) -> web.StreamResponse:
        events = self._start(done.served_by)  # (an engine that said nothing at all)
        return await self.sse.close(*events, block_stop(self.index),
                                    message_delta(done, served), MESSAGE_STOP)
