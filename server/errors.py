"""OpenAI-style JSON errors, and the one place inferline's errors become HTTP statuses.

    raise ApiError(404, "model 'x' not found", code="model_not_found", param="model")
    api_error_for(exc)   # any InferlineError -> ApiError with the right status

Every error body has the shape ``{"error": {"message", "type", "param", "code"}}``;
a chain that failed everywhere adds ``"attempts"``. Under ``/v1/messages`` the shape is
Anthropic's, ``{"type": "error", "error": {"type", "message"}}``, so Claude SDKs parse it:
``error.response(request.path)`` picks. No body ever carries a traceback.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from inferline.errors import (
    AllEnginesFailedError,
    ConfigurationError,
    EngineError,
    EngineUnavailableError,
    FatalEngineError,
    InferlineError,
    InputError,
    OutputValidationError,
    TemplateError,
    UnsupportedParameterError,
)

#: GenerationParams field -> the OpenAI request field a client set it with
OPENAI_PARAM = {"max_new_tokens": "max_tokens", "stop_strings": "stop",
                "guided_decoding": "response_format"}

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error", 502: "upstream_error",
          503: "service_unavailable", 504: "timeout_error"}
#: HTTP status -> Anthropic's error type (other 4xx: invalid_request_error, 5xx: api_error)
_ANTHROPIC_TYPES = {401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error", 504: "timeout_error"}
ANTHROPIC_PATH = "/v1/messages"


class ApiError(Exception):
    """An error answer: status, message, OpenAI code/param, extra headers and fields."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers, self.extra = headers or {}, extra

    def body_for(self, path: str) -> dict[str, Any]:
        """The body in the shape of the API that serves ``path``: OpenAI's, or Anthropic's
        (its error types; extra fields such as attempts kept in both)."""
        if path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/"):
            kind = _ANTHROPIC_TYPES.get(self.status) or (
                "api_error" if self.status >= 500 else "invalid_request_error")
            return {"type": "error", "error": {"type": kind, "message": self.message, **self.extra}}
        kind = _TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code, **self.extra}}

    def response(self, path: str) -> web.Response:
        """The JSON answer, in the shape of the API that serves ``path``."""
        return web.json_response(self.body_for(path), status=self.status, headers=self.headers)


def api_error_for(exc: InferlineError) -> ApiError:
    """The HTTP answer for an error an engine, chain or pipeline raised."""
    if isinstance(exc, AllEnginesFailedError):
        return ApiError(503, str(exc), code="all_engines_failed",
                        attempts=[a.as_dict() for a in exc.attempts])
    if isinstance(exc, UnsupportedParameterError):
        return ApiError(400, str(exc), code="unsupported_parameter",
                        param=OPENAI_PARAM.get(exc.param, exc.param))
    if isinstance(exc, EngineError):
        return _engine_error(exc)
    if isinstance(exc, TemplateError):
        return ApiError(400, str(exc), code="template_error")
    if isinstance(exc, InputError):
        return ApiError(400, str(exc), code="invalid_input")
    if isinstance(exc, OutputValidationError):
        return ApiError(502, str(exc), code="output_invalid")
    if isinstance(exc, ConfigurationError):  # the server's own settings are wrong
        return ApiError(500, f"server configuration error: {exc}", code="configuration_error")
    return ApiError(500, f"{type(exc).__name__}: {exc}", code="internal_error")


def _engine_error(exc: EngineError) -> ApiError:
    attempt = [{"engine": exc.engine, "error": type(exc).__name__, "message": exc.message}]
    if isinstance(exc, FatalEngineError) and exc.status in (400, 413, 422):
        return ApiError(400, str(exc), code="engine_rejected_request", attempts=attempt)
    if isinstance(exc, FatalEngineError):
        return ApiError(502, str(exc), code="engine_error", attempts=attempt)
    code = "engine_unavailable" if isinstance(exc, EngineUnavailableError) else "engine_failed"
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
    return ApiError(503, str(exc), code=code, headers=headers, attempts=attempt)


def http_error(exc: web.HTTPException) -> ApiError:
    """aiohttp's own errors (no route, wrong method, body too large) as JSON."""
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    message = "no such route" if exc.status == 404 else exc.text or exc.reason
    return ApiError(exc.status, message, code=codes.get(exc.status))
