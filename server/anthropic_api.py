"""Anthropic Messages requests in, inferline calls out, Anthropic messages and events back.

    req = parse_messages_request(body)   # ApiError(400) naming the bad field
    conv, config = req.conversation, req.inference_config
    message_body(req.model, done)        # the non-streaming answer

Request fields:

* mapped: ``system`` (a string or text blocks), ``messages`` (string content, or text,
  image, ``tool_use`` and ``tool_result`` blocks), ``max_tokens`` (required) ->
  max_new_tokens, ``temperature``, ``top_p``, ``top_k``, ``stop_sequences`` ->
  stop_strings, ``tools`` (client tools), ``tool_choice`` (auto, any, tool, none),
  ``stream``. Tool calls come back as ``tool_use`` blocks (streamed: ``input_json_delta``)
  with ``stop_reason`` tool_use.
* ignored (no effect on the answer): ``metadata``, ``service_tier``, ``cache_control``
  (top-level or on a block: there is no prompt cache to warm).
* consecutive turns of one role are combined into one turn, as Anthropic's API does.
* every other field (``thinking``, ...), block type (``document``, ...) and server tool
  (``web_search``, ...) is a 400 naming it.

``stop_reason`` is ``max_tokens`` for "length" and ``end_turn`` for "stop": engines do not
say whether a stop sequence or the model ended the text, so ``stop_sequence`` stays null.
"""

from __future__ import annotations

import json
import secrets
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from inferline.core.configs import GenerationParams, InferenceConfig, ToolSpec
from inferline.core.types import (
    ContentItem,
    ContentType,
    Conversation,
    Message,
    Role,
    ToolCall,
)
from inferline.engines.base import Completion, Usage
from inferline.server.errors import ApiError
from inferline.server.openai_api import (  # what both APIs share
    _invalid,
    _param,
    _Strict,
    parse_request,
    public_provenance,
)

IGNORED_FIELDS = frozenset({"metadata", "service_tier", "cache_control"})
STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
               "content_filter": "refusal"}


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None  # a prompt-caching hint; nothing to cache here

    def item(self) -> ContentItem:
        return ContentItem(type=ContentType.TEXT, content=self.text)


class ImageSource(_Strict):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(_Strict):
    type: Literal["image"]
    source: ImageSource
    cache_control: dict[str, Any] | None = None

    def item(self) -> ContentItem:
        """The image as a URL; base64 data as a ``data:`` URL, as OpenAI clients send it."""
        src = self.source
        url = src.url if src.type == "url" else f"data:{src.media_type};base64,{src.data}"
        if not url or (src.type == "base64" and not (src.media_type and src.data)):
            raise ApiError(400, f"a {src.type} image source needs "
                           f"{'url' if src.type == 'url' else 'media_type and data'}",
                           param="messages.content.source", code="invalid_value")
        return ContentItem(type=ContentType.IMAGE_URL, content=url)


class ToolUseBlock(_Strict):
    """An assistant's call: becomes one of its message's ``tool_calls``."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None

    def call(self) -> ToolCall:
        return ToolCall(id=self.id, name=self.name, arguments=json.dumps(self.input))


class ToolResultBlock(_Strict):
    """A tool's result (text; ``is_error`` is taken but not passed on): a ``tool`` message."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None

    def message(self) -> Message:
        content = self.content or ""
        text = content if isinstance(content, str) else "\n".join(b.text for b in content)
        return Message(role=Role.TOOL, tool_call_id=self.tool_use_id, content=text)


Block = Annotated[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock,
                  Field(discriminator="type")]


class InputMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    def blocks(self) -> list[Block]:
        content = self.content
        return [TextBlock(type="text", text=content)] if isinstance(content, str) else content


class ToolDef(_Strict):
    """A client tool: name, description and the JSON schema of its input."""

    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description,
                        parameters=self.input_schema)


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None  # taken, no effect

    def value(self) -> str:
        """As ``GenerationParams.tool_choice``: a mode, or the tool to call."""
        if self.type != "tool":
            return {"auto": "auto", "any": "required", "none": "none"}[self.type]
        if not self.name:
            raise ApiError(400, "tool_choice of type 'tool' needs a name",
                           param="tool_choice.name", code="invalid_value")
        return self.name


class MessagesRequest(_Strict):
    """The accepted body of ``POST /v1/messages``."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    max_tokens: int = Field(gt=0)
    system: str | list[TextBlock] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, gt=0)
    stop_sequences: list[str] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    stream: bool = False

    @cached_property
    def conversation(self) -> Conversation:
        system = self.system
        if isinstance(system, list):
            system = "\n\n".join(block.text for block in system)
        head = [Message(role=Role.SYSTEM, content=system)] if system else []
        return Conversation(messages=[*head, *_turns(self.messages)])

    @cached_property
    def inference_config(self) -> InferenceConfig:
        """Only the fields the client set; the engine's own defaults fill the rest."""
        fields: dict[str, Any] = {"max_new_tokens": self.max_tokens}
        for name in ("temperature", "top_p", "top_k"):
            if (value := getattr(self, name)) is not None:
                fields[name] = value
        if self.stop_sequences:
            fields["stop_strings"] = self.stop_sequences
        if self.tools:
            fields["tools"] = [tool.spec() for tool in self.tools]
        if self.tool_choice is not None:
            fields["tool_choice"] = choice = self.tool_choice.value()
            if self.tool_choice.type == "tool" and choice not in {t.name for t in self.tools or ()}:
                raise ApiError(400, f"tool_choice names {choice!r}, which is not in tools",
                               param="tool_choice.name", code="invalid_value")
        return InferenceConfig(generation=GenerationParams(**fields))


def _turns(messages: list[InputMessage]) -> list[Message]:
    """One message per turn: consecutive messages of one role become one (plain text stays
    a string, as engines that take text only expect); each ``tool_result`` block becomes a
    ``tool`` message of its own, and ``tool_use`` blocks their turn's ``tool_calls``."""
    turns: list[tuple[str, list[Block]]] = []
    for m in messages:
        for block in m.blocks():
            role = "tool" if isinstance(block, ToolResultBlock) else m.role
            if turns and turns[-1][0] == role != "tool":
                turns[-1][1].append(block)
            else:
                turns.append((role, [block]))
    return [_turn(role, blocks) for role, blocks in turns]


def _turn(role: str, blocks: list[Block]) -> Message:
    if isinstance(blocks[0], ToolResultBlock):
        return blocks[0].message()
    items = [b.item() for b in blocks if isinstance(b, TextBlock | ImageBlock)]
    calls = [b.call() for b in blocks if isinstance(b, ToolUseBlock)] or None
    plain = len(items) == 1 and items[0].type is ContentType.TEXT
    return Message(role=Role.USER if role == "user" else Role.ASSISTANT, tool_calls=calls,
                   content=(items[0].content or "") if plain else items)


def parse_messages_request(body: Any) -> MessagesRequest:
    """Validate a decoded JSON body; a bad one raises ``ApiError(400)`` naming the field."""
    return parse_request(body, MessagesRequest, IGNORED_FIELDS,
                         lambda exc: _unsupported_block(exc) or _invalid(exc))


def _unsupported_block(exc: ValidationError) -> ApiError | None:
    """A content block of a type we do not take (``document``, ``thinking``, ...)."""
    for error in exc.errors(include_url=False):
        if error["type"] == "union_tag_invalid":
            where = _param(error["loc"])
            return ApiError(400, f"unsupported content block type {error['ctx']['tag']!r} at "
                            f"{where!r} (supported: text, image, tool_use, tool_result)",
                            param=where, code="unsupported_parameter")
    return None


def message_body(model: str, done: Completion) -> dict[str, Any]:
    """The non-streaming answer; ``inferline`` holds its provenance."""
    text = [{"type": "text", "text": done.text}] if done.text or not done.tool_calls else []
    calls = [{"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c)}
             for c in done.tool_calls]
    return {**_message(model, [*text, *calls]),
            "stop_reason": stop_reason(done.finish_reason), "usage": _usage(done.usage),
            "inferline": public_provenance(done.provenance())}


def message_start(model: str) -> dict[str, Any]:
    """A stream's first event: the message, empty; its counts come in ``message_delta``."""
    return {"type": "message_start", "message": _message(model, [])}


def text_delta(text: str, index: int) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def input_json_delta(index: int, partial_json: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": partial_json}}


def _input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's ``input`` is; ``ApiError(502)`` if the
    engine's arguments are not a JSON object."""
    try:
        value = json.loads(call.arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ApiError(502, f"the engine's arguments for tool {call.name!r} are not a JSON "
                       f"object: {call.arguments[:200]!r}", code="bad_tool_arguments")
    return value


def message_delta(done: Completion, served: dict[str, Any]) -> dict[str, Any]:
    """A stream's closing facts: stop reason, token counts and provenance (``served``)."""
    return {"type": "message_delta",
            "delta": {"stop_reason": stop_reason(done.finish_reason), "stop_sequence": None},
            "usage": _usage(done.usage), "inferline": public_provenance(served)}


TEXT_BLOCK_START = {"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}
MESSAGE_STOP = {"type": "message_stop"}


def _message(model: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": f"msg_{secrets.token_hex(16)}", "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": None, "stop_sequence": None,
            "usage": _usage(Usage())}


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASON.get(finish_reason or "stop", "end_turn")


def _usage(usage: Usage) -> dict[str, int]:
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
