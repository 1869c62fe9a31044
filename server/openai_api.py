"""OpenAI chat-completions requests in, inferline calls out, OpenAI responses back.

    req = parse_chat_request(body)          # ApiError(400) naming the bad field
    conv, config = req.conversation, req.inference_config
    completion_body(req.model, done)        # the non-streaming answer

Request fields:

* mapped: ``messages``, ``max_completion_tokens`` / ``max_tokens`` -> max_new_tokens,
  ``temperature``, ``top_p``, ``stop`` -> stop_strings, ``seed``, ``frequency_penalty``,
  ``presence_penalty``, ``logit_bias``, ``response_format`` (``json_schema`` and
  ``json_object`` -> guided_decoding), ``stream``, ``stream_options.include_usage``,
  and the vLLM extensions ``top_k``, ``min_p``. ``n`` may only be 1, ``logprobs`` only false.
* tool calling: ``tools`` (functions), ``tool_choice`` ("none", "auto", "required" or a
  named function), assistant messages with ``tool_calls`` and ``tool`` messages with
  ``tool_call_id``; answers carry ``tool_calls`` (finish_reason "tool_calls"), streamed as
  OpenAI's tool-call deltas. Engines that cannot call tools are skipped for such requests.
* ignored (no effect on the answer): ``user``, ``metadata``, ``store``, ``service_tier``,
  ``parallel_tool_calls``, ``prompt_cache_key``, ``safety_identifier``.
* every other field is rejected with 400 and ``param`` naming it (audio, functions, ...).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Container
from functools import cached_property
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferline.core.configs import (
    GenerationParams,
    GuidedDecodingParams,
    InferenceConfig,
    ToolSpec,
)
from inferline.core.types import (
    ContentItem,
    ContentType,
    Conversation,
    Message,
    Role,
    ToolCall,
    ToolCallDelta,
)
from inferline.engines.base import Completion
from inferline.server.errors import ApiError

IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls",
                            "prompt_cache_key", "safety_identifier"})
_ROLES = {"system": Role.SYSTEM, "developer": Role.SYSTEM, "user": Role.USER,
          "assistant": Role.ASSISTANT, "tool": Role.TOOL}


class _Strict(BaseModel):
    # strict: "5" is not a number here, as in OpenAI's API
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageUrl(_Strict):
    url: str
    detail: str | None = None


class ContentPart(_Strict):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None

    def item(self) -> ContentItem:
        if self.type == "text":
            return ContentItem(type=ContentType.TEXT, content=self.text or "")
        if self.image_url is None:
            raise ApiError(400, "an image_url content part needs image_url.url",
                           param="messages.content.image_url", code="invalid_value")
        return ContentItem(type=ContentType.IMAGE_URL, content=self.image_url.url)


class FunctionCall(_Strict):
    name: str
    arguments: str


class ChatToolCall(_Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # accepted, not used
    tool_calls: list[ChatToolCall] | None = None  # assistant turns only
    tool_call_id: str | None = None  # tool turns only: the call this result answers

    def message(self) -> Message:
        content = self.content or ""
        items = [part.item() for part in content] if isinstance(content, list) else content
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ApiError(400, "a tool message, and only a tool message, has tool_call_id",
                           param="messages.tool_call_id", code="invalid_value")
        if self.tool_calls and self.role != "assistant":
            raise ApiError(400, "only assistant messages have tool_calls",
                           param="messages.tool_calls", code="invalid_value")
        calls = [ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                 for c in self.tool_calls] if self.tool_calls else None
        return Message(role=_ROLES[self.role], content=items, tool_calls=calls,
                       tool_call_id=self.tool_call_id)


class FunctionDef(_Strict):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionDef

    def spec(self) -> ToolSpec:
        f = self.function
        params = {} if f.parameters is None else {"parameters": f.parameters}
        return ToolSpec(name=f.name, description=f.description, strict=f.strict, **params)


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    def guided(self) -> GuidedDecodingParams | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return GuidedDecodingParams(json_schema={"type": "object"})
        schema = (self.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object",
                           param="response_format.json_schema.schema", code="invalid_value")
        return GuidedDecodingParams(json_schema=schema)


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # sent by newer SDKs; no effect here


class ChatRequest(_Strict):
    """The accepted body of ``POST /v1/chat/completions``."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, gt=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    n: Literal[1] | None = None
    logprobs: Literal[False] | None = None
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @cached_property
    def conversation(self) -> Conversation:
        return Conversation(messages=[m.message() for m in self.messages])

    @cached_property
    def inference_config(self) -> InferenceConfig:
        """Only the fields the client set; the engine's own defaults fill the rest."""
        fields: dict[str, Any] = {}
        if (limit := self.max_completion_tokens or self.max_tokens) is not None:
            fields["max_new_tokens"] = limit
        for name in ("temperature", "top_p", "top_k", "min_p", "seed", "frequency_penalty",
                     "presence_penalty", "logit_bias"):
            if (value := getattr(self, name)) is not None:
                fields[name] = value
        if self.stop is not None:
            fields["stop_strings"] = [self.stop] if isinstance(self.stop, str) else self.stop
        if self.response_format is not None and (guided := self.response_format.guided()):
            fields["guided_decoding"] = guided
        if self.tools:
            fields["tools"] = [tool.spec() for tool in self.tools]
        if (choice := self.tool_choice) is not None:
            fields["tool_choice"] = choice if isinstance(choice, str) else choice.function.name
            if not (isinstance(choice, str) or any(
                    t.function.name == fields["tool_choice"] for t in self.tools or ())):
                raise ApiError(400, f"tool_choice names {fields['tool_choice']!r}, which is not "
                               "in tools", param="tool_choice", code="invalid_value")
        return InferenceConfig(generation=GenerationParams(**fields))

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON body; a bad one raises ``ApiError(400)`` naming the field."""
    return parse_request(body, ChatRequest, IGNORED_FIELDS, _invalid)


RequestT = TypeVar("RequestT", bound=BaseModel)


def parse_request(body: Any, cls: type[RequestT], ignored: Container[str],
                  invalid: Callable[[ValidationError], ApiError]) -> RequestT:
    """``body`` as ``cls`` (either API's request), its ``ignored`` fields dropped; a bad one
    raises ``invalid``'s ``ApiError(400)``, naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_body")
    fields = {k: v for k, v in body.items() if k not in ignored}
    try:
        request = cls.model_validate(fields)
        _ = request.conversation, request.inference_config  # type: ignore[attr-defined]
    except ValidationError as exc:  # (those two are checked now, then cached)
        raise invalid(exc) from None
    return request


def _invalid(exc: ValidationError) -> ApiError:
    """The most specific error, with pydantic's union-branch names dropped from ``param``."""
    errors = exc.errors(include_url=False)
    worst = max(errors, key=lambda e: len(e["loc"]))
    param = _param(worst["loc"])
    if worst["type"] == "extra_forbidden":
        return ApiError(400, f"unsupported parameter {param!r}", param=param,
                        code="unsupported_parameter")
    if worst["type"] == "missing":
        return ApiError(400, f"missing required parameter {param!r}", param=param,
                        code="missing_required_parameter")
    reasons = dict.fromkeys(e["msg"] for e in errors if _param(e["loc"]) == param)
    return ApiError(400, f"invalid value for {param!r}: {' or '.join(reasons)}", param=param,
                    code="invalid_value")


def _param(loc: tuple[int | str, ...]) -> str:
    """``messages.0.content`` from ``("messages", 0, "content", "list[ContentPart]")``."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in _BRANCHES or "[" in p))]
    return ".".join(parts)


_BRANCHES = frozenset({"str", "int", "float", "bool", "dict", "list"})


def new_completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(16)}"


def completion_body(model: str, done: Completion) -> dict[str, Any]:
    """The non-streaming answer for one completion; ``inferline`` holds its provenance."""
    served = done.provenance()
    return {"id": new_completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "logprobs": None, "message": answer_message(done),
                         "finish_reason": done.finish_reason or "stop"}],
            "usage": served["usage"], "inferline": public_provenance(served)}


def public_provenance(served: dict[str, Any]) -> dict[str, Any]:
    """The ``inferline`` field of an answer (either API's) from ``Completion.provenance()``:
    who served it, every attempt, its cost."""
    return {"served_by": served["served_by"], "attempts": served["attempts"],
            "cost": served["cost"]}


def answer_message(done: Completion) -> dict[str, Any]:
    """The assistant message: its text, and its tool calls (content null if it has none)."""
    if not done.tool_calls:
        return {"role": "assistant", "content": done.text}
    return {"role": "assistant", "content": done.text or None, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in done.tool_calls]}


def tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    """One streamed piece of a tool call: its id and name come with its first piece."""
    function: dict[str, Any] = {"arguments": delta.arguments}
    if delta.id is None:
        return {"index": delta.index, "function": function}
    return {"index": delta.index, "id": delta.id, "type": "function",
            "function": {"name": delta.name, **function}}


def chunk_body(cid: str, created: int, model: str, delta: dict[str, Any],
               finish_reason: str | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with a single choice."""
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}]}
