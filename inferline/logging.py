"""structlog, configured once: console lines for dev, JSON for prod, secrets redacted.

    configure_logging(settings.log, secret_env_vars=["OPENAI_API_KEY"])
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict

from inferline.settings.model import LogSettings

_SECRET_FIELDS = ("api_key", "authorization", "token", "password", "secret")


class RedactSecrets:
    """Masks fields named like secrets, and any value equal to a named secret variable."""

    def __init__(self, env_vars: Iterable[str]) -> None:
        self.env_vars = list(env_vars)

    def __call__(self, logger: Any, method: str, event: EventDict) -> EventDict:
        secrets = [s for v in self.env_vars if (s := os.environ.get(v))]
        for key, value in event.items():
            if _secret_name(key):
                event[key] = "***"
            elif secrets and not isinstance(value, (bool, int, float, type(None))):
                text = value if isinstance(value, str) else str(value)  # errors, lists, dicts
                if any(secret in text for secret in secrets):
                    for secret in secrets:
                        text = text.replace(secret, "***")
                    event[key] = text
        return event


@functools.lru_cache(maxsize=4096)
def _secret_name(key: str) -> bool:
    """Whether a field is named like a secret (field names repeat: asked once each)."""
    lowered = key.lower()
    return any(s in lowered for s in _SECRET_FIELDS)


class ConsoleLines:
    """structlog's ``ConsoleRenderer(colors=False)``, written out for plain events (several
    times cheaper: one per request, the access log); events with a traceback, a stack or a
    logger name go to structlog's renderer itself. The same text either way."""

    _FULL_ONLY = frozenset({"stack", "exception", "exc_info", "logger", "logger_name"})
    _QUOTED = frozenset(" \t=\r\n\"'")

    def __init__(self) -> None:
        self._full = structlog.dev.ConsoleRenderer(colors=False)

    def __call__(self, logger: Any, method: str, event: EventDict) -> str:
        if not self._FULL_ONLY.isdisjoint(event):
            return self._full(logger, method, event)
        parts = []
        if stamp := str(event.pop("timestamp", "")):
            parts.append(stamp)
        if "level" in event:
            parts.append(f"[{event.pop('level'):<9}]")
        if "event" in event:
            parts.append(f"{event.pop('event')!s:<30}")
        parts.extend(f"{key}={self._repr(event[key])}" for key in sorted(event))
        return " ".join(parts).rstrip(" ")

    def _repr(self, value: Any) -> str:
        if isinstance(value, str) and self._QUOTED.isdisjoint(value):
            return value
        return repr(value)


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write.

    Binding the stream at configure time breaks every later log line once that
    stream is swapped and closed (notebooks, test capture, daemons redirecting).
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(settings: LogSettings, secret_env_vars: Iterable[str] = ()) -> None:
    renderer: Any = (structlog.processors.JSONRenderer() if settings.format == "json"
                     else structlog.dev.ConsoleRenderer(colors=True) if sys.stderr.isatty()
                     else ConsoleLines())
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"),
                    # tracebacks become text before redaction, so a key in one is masked too
                    structlog.processors.format_exc_info, RedactSecrets(secret_env_vars),
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(settings.level.upper())),
        # PrintLogger only writes and flushes, which is all _CurrentStderr offers
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
