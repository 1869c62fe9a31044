"""Logging as configured at start-up: JSON lines for prod, console lines for dev, and the
value of every named secret variable masked wherever it turns up (fields, errors, tracebacks)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator

import pytest
import structlog

from inferline.logging import configure_logging
from inferline.settings.model import LogSettings

SECRET = "sk-live-0123456789abcdef"


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_KEY", SECRET)


def test_prod_logs_one_json_object_per_line_with_secrets_masked(
        secret_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(level="INFO", format="json"), ["MY_API_KEY"])
    log = structlog.get_logger("t")
    log.info("remote_retry", url=f"https://x.test/?key={SECRET}", api_key="abc",
             error=RuntimeError(f"bad key {SECRET}"), attempts=[{"message": SECRET}], status=429)
    log.debug("not_shown_at_info")
    [line] = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert (event["event"], event["level"], event["status"]) == ("remote_retry", "info", 429)
    assert event["url"] == "https://x.test/?key=***" and event["api_key"] == "***"
    assert event["error"] == "bad key ***" and SECRET not in line


def test_prod_tracebacks_are_logged_and_masked(secret_env: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(format="json"), ["MY_API_KEY"])
    try:
        raise ValueError(f"upstream said: {SECRET}")
    except ValueError:
        structlog.get_logger("t").exception("request_crashed", path="/v1/chat/completions")
    [line] = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert event["event"] == "request_crashed" and event["level"] == "error"
    assert "Traceback" in event["exception"] and "upstream said: ***" in event["exception"]
    assert SECRET not in line


def test_dev_logs_console_lines(secret_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(format="console"), ["MY_API_KEY"])
    structlog.get_logger("t").warning("engine_unavailable", engine="local_vllm",
                                      reason=f"token {SECRET}")
    err = capsys.readouterr().err
    assert "engine_unavailable" in err and "engine=local_vllm" in err
    assert "reason='token ***'" in err or "reason=token ***" in err
    assert SECRET not in err and not err.lstrip().startswith("{")


def test_logging_follows_a_swapped_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(LogSettings(format="json"))
    first.close()  # e.g. a notebook cell's or a test's captured stream, gone
    monkeypatch.setattr(sys, "stderr", second)
    structlog.get_logger("t").info("engine_loaded", engine="llama")
    assert json.loads(second.getvalue())["event"] == "engine_loaded"
