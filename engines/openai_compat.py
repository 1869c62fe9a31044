"""Engines that speak OpenAI's chat-completions protocol.

``api_url`` may be the full endpoint or a base URL; requests go to::

    http://host:8000/v1/chat/completions  -> as given
    http://host:8000/v1 (any other path)  -> that + /chat/completions
    http://host:8000 (no path)            -> that + /v1/chat/completions

``tools``/``tool_choice`` pass through as OpenAI's; ``tool_calls`` come back on the
``Completion`` (a forced call's "stop" reads "tool_calls") and as stream deltas.

    engine = RemoteInferenceEngine(ModelParams(model_name="smollm2-135m"),
                                   remote_params=RemoteParams(api_url="http://localhost:8000"))
    engine.infer([Conversation.from_prompt("What is the capital of France?")])
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from inferline.core.configs import (
    TOOL_CHOICE_MODES,
    GenerationParams,
    GuidedDecodingParams,
    InferenceEngineType,
    ToolSpec,
)
from inferline.core.types import (
    ContentItem,
    ContentType,
    Conversation,
    Message,
    ToolCall,
    ToolCallDelta,
)
from inferline.engines._images import data_url
from inferline.engines.base import Completion, StreamChunk, Usage
from inferline.engines.remote import BaseRemoteEngine, Body, StreamEnd
from inferline.errors import UnsupportedParameterError

_SAMPLING = frozenset({"max_new_tokens", "temperature", "top_p", "frequency_penalty",
                       "presence_penalty", "stop_strings", "seed", "logit_bias", "guided_decoding"})


class RemoteInferenceEngine(BaseRemoteEngine):
    """Any OpenAI-compatible chat-completions server at ``remote_params.api_url``."""

    engine_type = InferenceEngineType.REMOTE
    supported_params = _SAMPLING
    can_call_tools = True  # tools/tool_choice pass through; tool_calls parse back
    #: GenerationParams field -> request field, sent only when not the default
    api_fields: ClassVar[dict[str, str]] = {
        "top_p": "top_p", "frequency_penalty": "frequency_penalty",
        "presence_penalty": "presence_penalty", "stop_strings": "stop", "seed": "seed",
        "logit_bias": "logit_bias"}
    max_tokens_field: ClassVar[str] = "max_tokens"

    @classmethod
    def _endpoint(cls, api_url: str) -> str:
        url = api_url.rstrip("/")
        if url.endswith("/chat/completions"):
            return url
        return url + ("/chat/completions" if urlsplit(url).path else "/v1/chat/completions")

    def _request_base(self, params: GenerationParams, *, stream: bool) -> Body:
        base: Body = {"model": self.model_params.model_name} if self.model_params.model_name else {}
        base[self.max_tokens_field] = params.max_new_tokens
        base["temperature"] = params.temperature
        base.update((self.api_fields[k], v) for k, v in params.non_default().items()
                    if k in self.api_fields)
        if params.guided_decoding is not None:
            base.update(self._guided(params.guided_decoding))
        if params.tools:
            base.update(_tools(params.tools, params.tool_choice))
        if stream:
            base["stream"] = True
            base["stream_options"] = {"include_usage": True}
        return base

    def _guided(self, guided: GuidedDecodingParams) -> Body:
        """OpenAI structured outputs: JSON schemas only."""
        if guided.json_schema is None and not guided.required:
            return {}
        if guided.json_schema is None:
            kind = "regex" if guided.regex is not None else "choice"
            raise UnsupportedParameterError(self.name, f"guided_decoding.{kind}", "set")
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": "output", "schema": guided.json_schema}}}

    def _body(self, conversation: Conversation, base: Body) -> Body:
        return {**base, "messages": [_message(m) for m in conversation.messages]}

    def _completion(self, body: Any) -> Completion:
        if "error" in body:
            raise self._event_error(body["error"])
        choice = body["choices"][0]
        message, finish = choice["message"], choice.get("finish_reason")
        calls = [_tool_call(c) for c in message.get("tool_calls") or ()]
        if calls and finish == "stop":  # a forced call (named tool_choice) ends with "stop"
            finish = "tool_calls"
        return Completion(message.get("content") or "", finish,
                          _usage(body.get("usage")) or Usage(), tool_calls=calls or ())

    def _stream_event(self, event: str, data: str) -> StreamChunk | None:
        if data == "[DONE]":
            raise StreamEnd
        obj = orjson.loads(data)
        if "error" in obj:
            raise self._event_error(obj["error"])
        choices = obj.get("choices") or [{}]
        delta = choices[0].get("delta") or {}
        calls = delta.get("tool_calls")
        return StreamChunk(delta.get("content") or "", choices[0].get("finish_reason"),
                           _usage(obj.get("usage")),
                           tool_calls=[_call_delta(c) for c in calls] if calls else None)


class RemoteVLLMInferenceEngine(RemoteInferenceEngine):
    """A vLLM server: adds top_k, min_p, stop_token_ids, skip_special_tokens, and guided
    decoding through vLLM's ``structured_outputs`` (json, regex or choice)."""

    engine_type = InferenceEngineType.REMOTE_VLLM
    supported_params = _SAMPLING | {"top_k", "min_p", "stop_token_ids", "skip_special_tokens"}
    api_fields: ClassVar[dict[str, str]] = {
        **RemoteInferenceEngine.api_fields, "top_k": "top_k", "min_p": "min_p",
        "stop_token_ids": "stop_token_ids", "skip_special_tokens": "skip_special_tokens"}

    def _guided(self, guided: GuidedDecodingParams) -> Body:
        if guided.json_schema is not None:
            return {"structured_outputs": {"json": guided.json_schema}}
        if guided.regex is not None:
            return {"structured_outputs": {"regex": guided.regex}}
        return {"structured_outputs": {"choice": guided.choice}}


class OpenAIInferenceEngine(RemoteInferenceEngine):
    """OpenAI's API; key from ``OPENAI_API_KEY`` unless ``api_key_env_varname`` says otherwise."""

    engine_type = InferenceEngineType.OPENAI
    default_api_url = "https://api.openai.com/v1/chat/completions"
    default_api_key_env = "OPENAI_API_KEY"
    max_tokens_field = "max_completion_tokens"


class GoogleGeminiInferenceEngine(RemoteInferenceEngine):
    """The Gemini API's OpenAI-compatible endpoint; key from ``GEMINI_API_KEY``."""

    engine_type = InferenceEngineType.GOOGLE_GEMINI
    default_api_url = "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
    default_api_key_env = "GEMINI_API_KEY"


class ParasailInferenceEngine(RemoteInferenceEngine):
    """Parasail.io's OpenAI-compatible endpoint; key from ``PARASAIL_API_KEY``."""

    engine_type = InferenceEngineType.PARASAIL
    default_api_url = "https://api.parasail.io/v1/chat/completions"
    default_api_key_env = "PARASAIL_API_KEY"


def _message(message: Message) -> dict[str, Any]:
    content = message.content
    out: dict[str, Any] = {"role": message.role.value, "content": content if isinstance(
        content, str) else [_part(c) for c in content]}
    if message.tool_calls:
        out["content"] = out["content"] or None  # OpenAI's null, not "", beside tool calls
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": c.arguments}}
                             for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tools(tools: list[ToolSpec], choice: str | None) -> Body:
    """``tools`` and ``tool_choice`` request fields (a tool's name forces that tool)."""
    body: Body = {"tools": [{"type": "function", "function": t.model_dump(exclude_none=True)}
                            for t in tools]}
    if choice is not None:
        body["tool_choice"] = choice if choice in TOOL_CHOICE_MODES else {
            "type": "function", "function": {"name": choice}}
    return body


def _tool_call(raw: dict[str, Any]) -> ToolCall:
    function = raw["function"]
    return ToolCall(id=raw.get("id") or f"call_{uuid.uuid4().hex[:24]}", name=function["name"],
                    arguments=function.get("arguments") or "{}")


def _call_delta(raw: dict[str, Any]) -> ToolCallDelta:
    function = raw.get("function") or {}
    return ToolCallDelta(raw.get("index") or 0, raw.get("id"), function.get("name"),
                         function.get("arguments") or "")


def _part(item: ContentItem) -> dict[str, Any]:
    if item.type is ContentType.TEXT:
        return {"type": "text", "text": item.content or ""}
    return {"type": "image_url", "image_url": {"url": data_url(item)}}


def _usage(raw: dict[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    return Usage(raw.get("prompt_tokens") or 0, raw.get("completion_tokens") or 0)
