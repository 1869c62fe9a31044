"""Conversations survive a trip through JSON and JSONL files, images and metadata included;
a bad line in a file is reported with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferline.core.types import (
    ContentItem,
    ContentType,
    Conversation,
    Message,
    Role,
    read_jsonl,
    write_jsonl,
)
from inferline.errors import ConfigurationError

PNG = b"\x89PNG\r\n\x1a\n\x00\x01binary\xff"


def mixed() -> Conversation:
    return Conversation(conversation_id="c1", metadata={"usage": {"prompt_tokens": 3}}, messages=[
        Message(role=Role.SYSTEM, content="Be brief."),
        Message(role=Role.USER, content=[
            ContentItem(type=ContentType.TEXT, content="What is in"),
            ContentItem(type=ContentType.IMAGE_BINARY, binary=PNG),
            ContentItem(type=ContentType.IMAGE_URL, content="https://example.test/cat.png"),
            ContentItem(type=ContentType.TEXT, content="this picture?")]),
        Message(role=Role.ASSISTANT, content="A cat.", id="m3"),
        Message(role=Role.TOOL, content="{}")])


def test_json_round_trip_keeps_images_roles_and_metadata() -> None:
    conv = mixed()
    text = conv.to_json()
    assert '"role":"tool"' in text and "image_binary" in text and "\\u0000" not in text
    back = Conversation.from_json(text)
    assert back == conv
    assert back.messages[1].content[1].binary == PNG  # base64 on the wire, bytes in memory
    assert back.messages[1].text == "What is in\nthis picture?" and back.messages[1].has_images


def test_jsonl_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "convs.jsonl"
    convs = [mixed(), Conversation.from_prompt("Hi", system="Sys")]
    write_jsonl(path, convs)
    assert len(path.read_text().splitlines()) == 2
    assert read_jsonl(path) == convs


def test_output_is_input_plus_the_assistant_message() -> None:
    conv = Conversation.from_prompt("Hi")
    out = conv.append(Message(role=Role.ASSISTANT, content="Hello"), finish_reason="stop")
    assert out.messages[:-1] == conv.messages and conv.metadata == {}
    assert out.last_message().text == "Hello" and out.metadata["finish_reason"] == "stop"
    assert out.last_message(Role.USER).text == "Hi"


def test_bad_jsonl_line_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "ok"}]}\n\n'
                    '{"messages": [{"role": "wizard", "content": "x"}]}\n')
    with pytest.raises(ConfigurationError) as err:
        read_jsonl(path)
    assert err.value.line == 3 and err.value.key == "messages.0.role"
    assert str(err.value).startswith(f"{path}:3: messages.0.role:")
