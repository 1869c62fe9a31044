"""Anthropic's Messages API (also served by vLLM at ``/v1/messages``).

System messages become the top-level ``system`` field; ``stop_reason`` maps to
our finish_reason (``end_turn``/``stop_sequence`` -> "stop", ``max_tokens`` ->
"length"); ``usage.input_tokens``/``output_tokens`` map to prompt/completion
tokens. ``api_url`` may be the full endpoint (``.../v1/messages``), a base URL
ending in ``/v1``, or a bare host.

    engine = AnthropicInferenceEngine(ModelParams(model_name="claude-3-5-sonnet-20240620"),
                                      remote_params=RemoteParams(api_key_env_varname="ANTHROPIC_API_KEY"))
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from inferline.core.configs import GenerationParams, InferenceEngineType
from inferline.core.types import ContentItem, ContentType, Conversation, Message, Role
from inferline.engines._images import image_bytes
from inferline.engines.base import Completion, StreamChunk, Usage
from inferline.engines.remote import BaseRemoteEngine, Body, StreamEnd

API_VERSION = "2023-06-01"
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "tool_use": "tool_calls"}
_FIELDS = {"top_p": "top_p", "top_k": "top_k", "stop_strings": "stop_sequences"}


class AnthropicInferenceEngine(BaseRemoteEngine):
    """Claude models over the Messages API (``x-api-key`` + ``anthropic-version`` headers)."""

    engine_type = InferenceEngineType.ANTHROPIC
    supported_params = frozenset({"max_new_tokens", "temperature", "top_p", "top_k",
                                  "stop_strings"})
    default_api_url = "https://api.anthropic.com/v1/messages"
    default_api_key_env = "ANTHROPIC_API_KEY"

    @classmethod
    def _endpoint(cls, api_url: str) -> str:
        url = api_url.rstrip("/")
        if url.endswith("/messages"):
            return url
        return url + ("/messages" if url.endswith("/v1") else "/v1/messages")

    def _base_headers(self) -> dict[str, str]:
        return {"anthropic-version": API_VERSION}

    def _auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def _request_base(self, params: GenerationParams, *, stream: bool) -> Body:
        base: Body = {"model": self.model_params.model_name, "max_tokens": params.max_new_tokens,
                      "temperature": params.temperature}
        for key, value in params.non_default().items():
            if key in _FIELDS:
                base[_FIELDS[key]] = value
        if stream:
            base["stream"] = True
        return base

    def _body(self, conversation: Conversation, base: Body) -> Body:
        body = dict(base)
        system = [m.text for m in conversation.messages if m.role is Role.SYSTEM]
        if system:
            body["system"] = "\n\n".join(system)
        body["messages"] = [_message(m) for m in conversation.messages if m.role is not Role.SYSTEM]
        return body

    def _completion(self, body: Any) -> Completion:
        if body.get("type") == "error":
            raise self._event_error(body["error"])
        text = "".join(part["text"] for part in body["content"] if part["type"] == "text")
        return Completion(text, _finish(body.get("stop_reason")), _usage(body["usage"]))

    def _stream_event(self, event: str, data: str) -> StreamChunk | None:
        obj = orjson.loads(data)
        kind = obj.get("type", event)
        if kind == "content_block_delta":
            return StreamChunk(obj["delta"].get("text") or "")
        if kind == "message_start":
            return StreamChunk(usage=_usage(obj["message"].get("usage") or {}))
        if kind == "message_delta":
            return StreamChunk(finish_reason=_finish(obj["delta"].get("stop_reason")),
                               usage=_usage(obj.get("usage") or {}))
        if kind == "message_stop":
            raise StreamEnd
        if kind == "error":
            raise self._event_error(obj.get("error"))
        return None  # ping, content_block_start/stop


def _message(message: Message) -> dict[str, Any]:
    role = "assistant" if message.role is Role.ASSISTANT else "user"
    if isinstance(message.content, str):
        return {"role": role, "content": message.content}
    return {"role": role, "content": [_part(c) for c in message.content]}


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
