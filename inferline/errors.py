"""The one error tree of inferline.

Every vendor exception is translated once, at the backend's edge, into one of
these, with ``raise OurError(...) from exc``::

    InferlineError
    ├── ConfigurationError            bad settings, config, pipeline or flag (file, line, key)
    ├── TemplateError                 a prompt template failed to render for a row
    ├── InputError                    an input row is malformed or lacks a declared field
    ├── OutputValidationError         a post-processor rejected a model's output
    ├── EngineError                   an engine call failed (engine, status)
    │   ├── RetryableEngineError      timeouts, connection refused, 408/409/429/5xx, model busy
    │   ├── FatalEngineError          400/401/403/404/422, bad request, context too long
    │   │   └── UnsupportedRequestError  this engine cannot do what this request asks
    │   │       └── UnsupportedParameterError   (a generation parameter; also a
    │   │                                        ConfigurationError in settings)
    │   └── EngineUnavailableError    package missing, model missing, no GPU, no API key,
    │                                 does not fit in memory; a fallback chain skips it
    └── AllEnginesFailedError         every engine of a chain failed; lists each attempt

``retryable`` tells a retry loop what to do; ``EngineUnavailableError`` and
``RetryableEngineError`` tell a fallback chain to move on. A request error
(``UnsupportedRequestError``) fails that request on that engine only: a chain
tries the next engine, and the engine stays available for other requests.
Only ``preflight`` and ``load`` failures mark an engine unavailable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class InferlineError(Exception):
    """Base of every error inferline raises on purpose."""


class ConfigurationError(InferlineError):
    """Bad configuration, with where it came from: ``file:line: key: message``.

    >>> str(ConfigurationError("unknown key", file="s.yaml", line=3, key="engines.x"))
    's.yaml:3: engines.x: unknown key'
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message, self.file, self.line, self.key, self.hint = message, file, line, key, hint
        where = f"{file}:{line}" if file and line else file
        text = ": ".join(p for p in (where, key, message) if p)
        super().__init__(f"{text} (did you mean {hint!r}?)" if hint else text)


class TemplateError(InferlineError):
    """A prompt template failed to render for a row; names the template.

    (A template that does not compile is a ``ConfigurationError`` with file and line.)
    """


class InputError(InferlineError):
    """An input row is malformed or lacks a field the pipeline declares."""


class OutputValidationError(InferlineError):
    """A post-processing step rejected the model's output."""

    def __init__(self, message: str, *, step: str, output: str) -> None:
        self.step, self.output, self.reason = step, output, message
        super().__init__(f"{step}: {message}")


class EngineError(InferlineError):
    """An engine call failed. ``engine`` names it; ``status`` is an HTTP status if any."""

    retryable: bool = False

    def __init__(self, message: str, *, engine: str = "", status: int | None = None,
                 retry_after: float | None = None) -> None:
        self.message, self.engine = message, engine
        self.status, self.retry_after = status, retry_after
        prefix = f"{engine}: " if engine else ""
        code = f"HTTP {status}: " if status else ""
        super().__init__(f"{prefix}{code}{message}")


class RetryableEngineError(EngineError):
    """Transient: a timeout, refused connection, 408/409/429/5xx or a busy model."""

    retryable = True


class FatalEngineError(EngineError):
    """Permanent for this request: 400/401/403/404/422, bad request, context too long."""


class EngineUnavailableError(EngineError):
    """The engine cannot run here at all: missing package, model, GPU, key or memory."""


class UnsupportedRequestError(FatalEngineError):
    """This engine cannot do what this one request asks (a parameter, a capability)."""


class UnsupportedParameterError(UnsupportedRequestError, ConfigurationError):
    """An engine was asked for a generation parameter it cannot honour.

    >>> str(UnsupportedParameterError("openai", "top_k", 5))
    'openai: generation.top_k: not supported by this engine (set to 5)'
    """

    def __init__(self, engine: str, param: str, value: Any) -> None:
        message = f"generation.{param}: not supported by this engine (set to {value!r})"
        super().__init__(message, engine=engine)  # EngineError's, then ConfigurationError's
        self.message, self.engine = message, engine
        self.param, self.key = param, f"generation.{param}"


def error_for_status(status: int, message: str, *, engine: str = "",
                     retry_after: float | None = None) -> EngineError:
    """The error class an HTTP status maps to (408/409/429/5xx retry; other 4xx do not)."""
    if status in (408, 409, 429) or status >= 500:
        return RetryableEngineError(message, engine=engine, status=status, retry_after=retry_after)
    return FatalEngineError(message, engine=engine, status=status)


@dataclass(slots=True)  # not frozen: one is made per row served, and frozen init is 3x slower
class Attempt:
    """One try of one engine inside a fallback chain."""

    engine: str
    error: str | None  # error class name, None on success
    message: str | None
    latency_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "error": self.error, "message": self.message,
                "latency_ms": round(self.latency_s * 1000, 3)}


class AllEnginesFailedError(InferlineError):
    """Every engine of a chain failed; ``attempts`` lists each, in order."""

    def __init__(self, chain: str, attempts: list[Attempt]) -> None:
        self.chain, self.attempts = chain, attempts
        lines = [f"  {a.engine}: {a.error}: {a.message}" for a in attempts]
        super().__init__(f"all engines of chain {chain!r} failed:\n" + "\n".join(lines))
