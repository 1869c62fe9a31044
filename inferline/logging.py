"""structlog, configured once: console lines for dev, JSON for prod, secrets redacted.

    configure_logging(settings.log, secret_env_vars=["OPENAI_API_KEY"])
"""

from __future__ import annotations

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
        secrets = [os.environ[v] for v in self.env_vars if os.environ.get(v)]
        for key, value in event.items():
            if any(s in key.lower() for s in _SECRET_FIELDS):
                event[key] = "***"
            elif secrets and not isinstance(value, (bool, int, float, type(None))):
                text = value if isinstance(value, str) else str(value)  # errors, lists, dicts
                if any(secret in text for secret in secrets):
                    for secret in secrets:
                        text = text.replace(secret, "***")
                    event[key] = text
        return event


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
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
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
