"""Engines that speak OpenAI's chat-completions protocol.

``api_url`` may be the full endpoint or a base URL; requests go to::

    http://host:8000/v1/chat/completions  -> as given
    http://host:8000/v1 (any other path)  -> that + /chat/completions
    http://host:8000 (no path)            -> that + /v1/chat/completions

    engine = RemoteInferenceEngine(ModelParams(model_name="smollm2-135m"),
                                   remote_params=RemoteParams(api_url="http://localhost:8000"))
    engine.infer([Conversation.from_prompt("What is the capital of France?")])
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from inferline.core.configs import (
    GenerationParams,
    GuidedDecodingParams,
    InferenceEngineType,
)
from inferline.core.types import ContentItem, ContentType, Conversation, Message
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
        for key, value in params.non_default().items():
            if key in self.api_fields:
                base[self.api_fields[key]] = value
        if params.guided_decoding is not None:
            base.update(self._guided(params.guided_decoding))
        if stream:
            base["stream"] = True
            base["stream_options"] = {"include_usage": True}
        return base

    def _guided(self, guided: GuidedDecodingParams) -> Body:
        """OpenAI structured outputs: JSON schemas only."""
        if guided.json_schema is None:
            kind = "regex" if guided.regex is not None else "choice"
            raise UnsupportedParameterError(self.name, f"guided_decoding.{kind}", "set")
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": "output", "schema": guided.json_schema}}}

    def _body(self, conversation: Conversation, base: Body) -> Body:
        body = dict(base)
        body["messages"] = [_message(m) for m in conversation.messages]
        return body

    def _completion(self, body: Any) -> Completion:
        if "error" in body:
            raise self._event_error(body["error"])
        choice = body["choices"][0]
        return Completion(choice["message"].get("content") or "", choice.get("finish_reason"),
                          _usage(body.get("usage")) or Usage())

    def _stream_event(self, event: str, data: str) -> StreamChunk | None:
        if data == "[DONE]":
            raise StreamEnd
        obj = orjson.loads(data)
        if "error" in obj:
            raise self._event_error(obj["error"])
        choices = obj.get("choices") or [{}]
        delta = choices[0].get("delta") or {}
        return StreamChunk(delta.get("content") or "", choices[0].get("finish_reason"),
                           _usage(obj.get("usage")))


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
    if isinstance(message.content, str):
        return {"role": message.role.value, "content": message.content}
    return {"role": message.role.value, "content": [_part(c) for c in message.content]}


def _part(item: ContentItem) -> dict[str, Any]:
    if item.type is ContentType.TEXT:
        return {"type": "text", "text": item.content or ""}
    return {"type": "image_url", "image_url": {"url": data_url(item)}}


def _usage(raw: dict[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    return Usage(raw.get("prompt_tokens") or 0, raw.get("completion_tokens") or 0)
