"""Conversations: what goes into an engine and what comes out.

    conv = Conversation(messages=[Message(role=Role.USER, content="Hi")])
    out = engine.infer([conv])[0]   # conv + one assistant message
    out.last_message().text, out.metadata["usage"], out.metadata["finish_reason"]
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from inferline.errors import ConfigurationError


class Role(str, Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class ContentType(str, Enum):
    TEXT = "text"
    IMAGE_URL = "image_url"
    IMAGE_PATH = "image_path"
    IMAGE_BINARY = "image_binary"


class ContentItem(BaseModel):
    """One part of a multimodal message: text, or an image by URL, path or bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ContentType
    content: str | None = None
    binary: bytes | None = None

    @field_serializer("binary")
    def _b64(self, value: bytes | None) -> str | None:
        return base64.b64encode(value).decode() if value is not None else None

    @field_validator("binary", mode="before")
    @classmethod
    def _unb64(cls, value: Any) -> Any:
        return base64.b64decode(value) if isinstance(value, str) else value

    @property
    def is_image(self) -> bool:
        return self.type is not ContentType.TEXT


class ToolCall(BaseModel):
    """A function call an assistant asked for: ``arguments`` is JSON text, as the model wrote it.

    >>> ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}').name
    'get_weather'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    arguments: str = "{}"


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the first piece of call ``index`` (0, 1, ... in the
    order the calls start) has its ``id`` and ``name``, later ones more ``arguments`` text
    (joined in order, they make the JSON)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Message(BaseModel):
    """One turn. ``content`` is a string, or a list of text and image items.

    An assistant turn may carry ``tool_calls``; a ``tool`` turn answers one of them, named
    by ``tool_call_id``, with its result as ``content``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str | list[ContentItem] = ""
    id: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The message's text parts joined by newlines."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(c.content or "" for c in self.content if c.type is ContentType.TEXT)

    @property
    def has_images(self) -> bool:
        return not isinstance(self.content, str) and any(c.is_image for c in self.content)


class Conversation(BaseModel):
    """An ordered list of messages plus free-form metadata (usage, engine, ...)."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str | None = None
    messages: list[Message]
    metadata: dict[str, Any] = Field(default_factory=dict)

    def last_message(self, role: Role | None = None) -> Message | None:
        for msg in reversed(self.messages):
            if role is None or msg.role == role:
                return msg
        return None

    def append(self, message: Message, **metadata: Any) -> Conversation:
        """A new conversation with ``message`` appended and ``metadata`` merged in."""
        # validated, not model_construct: pydantic-core keeps the Message instances as they
        # are, and is faster than the Python-level construct
        return Conversation(conversation_id=self.conversation_id,
                            messages=[*self.messages, message],
                            metadata={**self.metadata, **metadata})

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Conversation:
        return cls.model_validate_json(text)

    @classmethod
    def from_prompt(cls, prompt: str, system: str | None = None) -> Conversation:
        msgs = [Message(role=Role.SYSTEM, content=system)] if system else []
        return cls(messages=[*msgs, Message(role=Role.USER, content=prompt)])


def read_jsonl(path: str | Path) -> list[Conversation]:
    """Conversations from a JSONL file, one per non-blank line.

    A bad line raises ``ConfigurationError`` naming the file and line.
    """
    conversations = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                conversations.append(Conversation.model_validate_json(line))
            except pydantic.ValidationError as exc:
                err = exc.errors()[0]
                key = ".".join(str(p) for p in err["loc"]) or None
                raise ConfigurationError(err["msg"], file=str(path), line=lineno, key=key) from exc
    return conversations


def write_jsonl(path: str | Path, conversations: Iterable[Conversation]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for conv in conversations:
            fh.write(conv.to_json() + "\n")


def dumps_row(row: dict[str, Any]) -> str:
    """One JSONL line for an arbitrary row (non-ASCII kept readable)."""
    return json.dumps(row, ensure_ascii=False, default=str)
