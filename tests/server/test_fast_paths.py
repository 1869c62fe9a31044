"""The gateway's fast paths give what the slow ones gave: console log lines as structlog's
renderer writes them, and JSON that decodes to the same values as ``json.dumps``'s."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from inferline.logging import ConsoleLines
from inferline.server._json import dumps

EVENTS: list[dict[str, Any]] = [
    {"timestamp": "2026-11-26T19:20:29.123456Z", "level": "info", "event": "http_request",
     "request_id": "0123abcd", "method": "POST", "path": "/v1/chat/completions",
     "status": 200, "duration_ms": 1.2, "usage": {"prompt_tokens": 12}, "cost": 0.0,
     "served_by": "stub", "stream": False, "model": None},
    {"level": "warning", "event": "engine_fallback", "error": "it's 'quoted'", "rows": 3},
    {"timestamp": "t", "level": "error", "event": "a-very-long-event-name-over-thirty-chars",
     "x": "", "y": "a=b", "z": "tab\there", "w": ["list", 1], "v": "plain"},
    {"event": "just_an_event"},
    {"level": "debug", "event": 5, "unicode": "Grüße, 世界"},
    {"timestamp": "", "level": "critical", "event": "e"},
]


@pytest.mark.parametrize("event", EVENTS)
def test_console_lines_are_structlog_console_lines(event: dict[str, Any]) -> None:
    expected = structlog.dev.ConsoleRenderer(colors=False)(None, "info", dict(event))
    assert ConsoleLines()(None, "info", dict(event)) == expected


def test_console_lines_hand_tracebacks_to_structlog() -> None:
    event = {"level": "error", "event": "request_crashed", "exception": "Traceback: boom"}
    expected = structlog.dev.ConsoleRenderer(colors=False)(None, "error", dict(event))
    assert ConsoleLines()(None, "error", dict(event)) == expected
    assert "Traceback: boom" in expected


@pytest.mark.parametrize("value", [
    {"a": 1, "b": [1.5, None, True], "text": "Grüße \u2028 \"q\""},
    {"huge": 2**70},  # beyond orjson: the standard library encodes it
    {1: "int key"},
])
def test_dumps_decodes_to_what_json_dumps_gives(value: Any) -> None:
    assert json.loads(dumps(value)) == json.loads(json.dumps(value))
