"""Anthropic's Messages API (also served by vLLM at ``/v1/messages``).

System messages become the top-level ``system`` field; ``stop_reason`` maps to
our finish_reason (``end_turn``/``stop_sequence`` -> "stop", ``max_tokens`` ->
"length"); ``usage.input_tokens``/``output_tokens`` map to prompt/completion
tokens. ``api_url`` may be the full endpoint (``.../v1/messages``), a base URL
ending in ``/v1``, or a bare host. Tools go as ``tools`` (``input_schema``) and
``tool_choice`` (required -> ``any``, a name -> ``tool``); assistant tool calls as
``tool_use`` blocks, tool messages as ``tool_result`` blocks in a user turn;
``tool_use`` blocks come back as tool calls (``stop_reason`` tool_use -> "tool_calls").

    engine = AnthropicInferenceEngine(ModelParams(model_name="claude-3-5-sonnet-20240620"),
                                      remote_params=RemoteParams(api_key_env_varname="ANTHROPIC_API_KEY"))
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from inferline.core.configs import GenerationParams, InferenceEngineType, ToolSpec
from inferline.core.types import (
    ContentItem,
    ContentType,
    Conversation,
    Message,
    Role,
    ToolCall,
    ToolCallDelta,
)
from inferline.engines._images import image_bytes
from inferline.engines.base import Completion, StreamChunk, Usage
from inferline.engines.remote import BaseRemoteEngine, Body, StreamEnd
from inferline.errors import UnsupportedRequestError

API_VERSION = "2023-06-01"
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "tool_use": "tool_calls"}
_FIELDS = {"top_p": "top_p", "top_k": "top_k", "stop_strings": "stop_sequences"}
_TOOL_CHOICE = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}


class AnthropicInferenceEngine(BaseRemoteEngine):
    """Claude models over the Messages API (``x-api-key`` + ``anthropic-version`` headers)."""

    engine_type = InferenceEngineType.ANTHROPIC
    supported_params = frozenset({"max_new_tokens", "temperature", "top_p", "top_k",
                                  "stop_strings"})
    default_api_url = "https://api.anthropic.com/v1/messages"
    default_api_key_env = "ANTHROPIC_API_KEY"
    can_call_tools = True  # tools <-> tool_use / tool_result blocks

    @classmethod
    def _endpoint(cls, api_url: str) -> str:
        url = api_url.rstrip("/")
        if url.endswith("/messages"):
            return url
        return url + ("/messages" if url.endswith("/v1") else "/v1/messages")

    def _request_headers(self, key: str | None) -> dict[str, str]:
        return {"anthropic-version": API_VERSION, **({"x-api-key": key} if key else {})}

    def _request_base(self, params: GenerationParams, *, stream: bool) -> Body:
        base: Body = {"model": self.model_params.model_name, "max_tokens": params.max_new_tokens,
                      "temperature": params.temperature,
                      **{_FIELDS[k]: v for k, v in params.non_default().items() if k in _FIELDS}}
        if params.tools:
            base.update(_tools(params.tools, params.tool_choice))
        if stream:
            base["stream"] = True
        return base

    def _body(self, conversation: Conversation, base: Body) -> Body:
        system = [m.text for m in conversation.messages if m.role is Role.SYSTEM]
        messages = [_message(m) for m in conversation.messages if m.role is not Role.SYSTEM]
        return {**base, **({"system": "\n\n".join(system)} if system else {}), "messages": messages}

    def _completion(self, body: Any) -> Completion:
        if body.get("type") == "error":
            raise self._event_error(body["error"])
        text = "".join(part["text"] for part in body["content"] if part["type"] == "text")
        calls = [ToolCall(id=part["id"], name=part["name"],
                          arguments=orjson.dumps(part.get("input") or {}).decode())
                 for part in body["content"] if part["type"] == "tool_use"]
        return Completion(text, _finish(body.get("stop_reason")), _usage(body["usage"]),
                          tool_calls=calls or ())

    def _stream_event(self, event: str, data: str) -> StreamChunk | None:
        obj = orjson.loads(data)
        kind = obj.get("type", event)
        if kind == "content_block_delta":
            delta = obj["delta"]
            if delta.get("type") == "input_json_delta":
                return StreamChunk(tool_calls=[ToolCallDelta(
                    obj["index"], arguments=delta.get("partial_json") or "")])
            return StreamChunk(delta.get("text") or "")
        if kind == "content_block_start" and obj["content_block"].get("type") == "tool_use":
            block = obj["content_block"]
            return StreamChunk(tool_calls=[ToolCallDelta(obj["index"], block["id"],
                                                         block["name"])])
        if kind == "message_start":
            return StreamChunk(usage=_usage(obj["message"].get("usage") or {}))
        if kind == "message_delta":
            return StreamChunk(finish_reason=_finish(obj["delta"].get("stop_reason")),
                               usage=_usage(obj.get("usage") or {}))
        if kind == "message_stop":
            raise StreamEnd
        if kind == "error":
            raise self._event_error(obj.get("error"))
        return None  # ping, content_block_stop, a text block's start


def _message(message: Message) -> dict[str, Any]:
    role = "assistant" if message.role is Role.ASSISTANT else "user"
    if message.role is Role.TOOL:  # a result goes back in a user turn (the API joins turns)
        return {"role": "user", "content": [{"type": "tool_result",
                                             "tool_use_id": message.tool_call_id,
                                             "content": message.text}]}
    if message.tool_calls:
        return {"role": role, "content": [
            *([{"type": "text", "text": message.text}] if message.text else []),
            *({"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c)}
              for c in message.tool_calls)]}
    if isinstance(message.content, str):
        return {"role": role, "content": message.content}
    return {"role": role, "content": [_part(c) for c in message.content]}


def _input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as ``tool_use`` input, which must be a JSON object."""
    try:
        value = orjson.loads(call.arguments)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UnsupportedRequestError(f"the arguments of tool call {call.id!r} are not a JSON "
                                      "object, which Anthropic's tool_use input must be")
    return value


def _tools(tools: list[ToolSpec], choice: str | None) -> dict[str, Any]:
    """``tools`` (``input_schema``) and ``tool_choice`` (a tool's name forces that tool)."""
    body: dict[str, Any] = {"tools": [
        {"name": t.name, "input_schema": t.parameters,
         **({"description": t.description} if t.description else {})} for t in tools]}
    if choice is not None:
        body["tool_choice"] = _TOOL_CHOICE.get(choice) or {"type": "tool", "name": choice}
    return body


def _part(item: ContentItem) -> dict[str, Any]:
    if item.type is ContentType.TEXT:
        return {"type": "text", "text": item.content or ""}
    if item.type is ContentType.IMAGE_URL:
        return {"type": "image", "source": {"type": "url", "url": item.content}}
    mime, data = image_bytes(item)
    return {"type": "image", "source": {"type": "base64", "media_type": mime,
                                        "data": base64.b64encode(data).decode()}}


def _finish(stop_reason: str | None) -> str | None:
    return _FINISH.get(stop_reason, stop_reason) if stop_reason else None


def _usage(raw: dict[str, Any]) -> Usage:
    return Usage(raw.get("input_tokens") or 0, raw.get("output_tokens") or 0)
