"""Pieces the local engines (llama.cpp, native, vLLM) share.

    options = parse_options(LlamaCppOptions, model_params.model_kwargs, engine="llamacpp")
    messages = chat_messages(conversation, engine="llamacpp")
    cut = StopStrings(["\\n\\n"]); cut.feed("Hello\\n") ... cut.flush()
    check_model_fits("smollm2-135m", "gguf", engine="llamacpp")  # or EngineUnavailableError
    async for chunk in stream_from_thread(work): ...  # work(emit, cancel) runs in a thread
"""

from __future__ import annotations

import asyncio
import difflib
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from inferline.core.configs import GenerationParams, ModelParams
from inferline.core.types import Conversation, Role
from inferline.engines.base import BaseInferenceEngine
from inferline.engines.hardware import check_fits, estimate_memory, params_from_hf_dir
from inferline.engines.models import hf_dtype, looks_like_path, packaged
from inferline.errors import (
    ConfigurationError,
    EngineUnavailableError,
    FatalEngineError,
    UnsupportedRequestError,
)

Emit = Callable[[Any], None]


class Options(BaseModel):
    """Base of the engines' typed ``model_kwargs``: a misspelt key is an error."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LocalInferenceEngine(BaseInferenceEngine):
    """Base of the in-process engines: typed ``model_kwargs`` (``options_class``) and one
    backend call at a time (``_lock``): the backends are not thread-safe, and one call
    already uses every core."""

    is_local = True
    can_call_tools = False  # no tool-call parsing in-process: a chain asks a remote engine
    options_class: ClassVar[type[Options]]

    def __init__(self, model_params: ModelParams, *,
                 generation_params: GenerationParams | None = None,
                 name: str | None = None) -> None:
        super().__init__(model_params, generation_params=generation_params, name=name)
        self.options: Any = parse_options(self.options_class, model_params.model_kwargs,
                                          engine=self.name)
        self._lock = threading.Lock()


def parse_options(cls: type[Options], kwargs: dict[str, Any], *, engine: str) -> Options:
    """``kwargs`` validated against ``cls``; errors name the key and the closest known one."""
    try:
        return cls.model_validate(kwargs)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            hint = next(iter(difflib.get_close_matches(key, list(cls.model_fields), n=1)), None)
            message = f"unknown model_kwargs key for {engine}; known: {', '.join(cls.model_fields)}"
        else:
            hint, message = None, f"{err['msg']} (got {err.get('input')!r})"
        raise ConfigurationError(message, key=f"model.model_kwargs.{key}", hint=hint) from None


def token_bias(bias: dict[str, float], *, engine: str) -> dict[int, float]:
    """``logit_bias`` keyed by token id; other keys fail this request, not the engine."""
    try:
        return {int(token): value for token, value in bias.items()}
    except ValueError:
        raise UnsupportedRequestError("generation.logit_bias: this engine takes logit_bias "
                                      "keyed by token id", engine=engine) from None


def chat_messages(conversation: Conversation, *, engine: str) -> list[dict[str, str]]:
    """OpenAI-style ``[{"role", "content"}]`` for a text-only conversation."""
    out = []
    for message in conversation.messages:
        if message.has_images:
            raise FatalEngineError("this engine takes text only; the conversation has images",
                                   engine=engine)
        if message.tool_calls or message.role is Role.TOOL:
            raise UnsupportedRequestError("this engine cannot call tools; the conversation has "
                                          "tool calls or results", engine=engine)
        out.append({"role": message.role.value, "content": message.text})
    return out


_END = object()


async def stream_from_thread(work: Callable[[Emit, threading.Event], None]) -> AsyncIterator[Any]:
    """Run blocking ``work(emit, cancel)`` in a thread; yield what it emits, as it emits it.

    An exception in ``work`` is raised here. Closing the iterator early sets
    ``cancel`` (``work`` should stop soon) and waits for the thread to end, so
    the backend's lock is free again afterwards.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()

    def emit(item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            work(emit, cancel)
        except BaseException as exc:  # re-raised in the consumer
            emit(exc)
        finally:
            emit(_END)

    worker = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()
        await worker


def cut_at_stop(text: str, stops: Iterable[str] | None) -> tuple[str, bool]:
    """``text`` up to the first stop string (excluded), and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops or ()) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class StopStrings:
    """Streams text while holding back what could be the start of a stop string.

    ``feed`` returns the text safe to emit now; ``stopped`` turns True once a stop
    string appears (nothing after it is ever emitted); ``flush`` returns the rest.
    """

    def __init__(self, stops: Iterable[str] | None) -> None:
        self.stops = [s for s in stops or () if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self._buffer += text
        head, self.stopped = cut_at_stop(self._buffer, self.stops)
        if self.stopped:
            self._buffer = ""
            return head
        cut = len(self._buffer) - self._hold
        out, self._buffer = self._buffer[:max(cut, 0)], self._buffer[max(cut, 0):]
        return out

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return "" if self.stopped else out


def check_model_fits(model_name: str | None, fmt: str, *, precision: str | None = None,
                     device: str | None = "cpu", engine: str = "") -> None:
    """Refuse (``EngineUnavailableError``) a missing local model or one that cannot fit.

    Cheap: reads sizes, never weights. A hub id's size is unknown until download.
    ``device=None`` checks only that a local model exists.
    """
    if not model_name:
        raise ConfigurationError("no model given", key="model.model_name")
    need = _model_bytes(model_name, fmt, None if precision == "auto" else precision, engine)
    if need is not None and device is not None:
        check_fits(need, device=device, what=f"model {model_name!r}", engine=engine)


def _model_bytes(name: str, fmt: str, precision: str | None, engine: str) -> int | None:
    path = Path(name).expanduser()
    if not path.exists() and (spec := packaged(name)) is not None:
        default = spec.quantization if fmt == "gguf" else hf_dtype()
        return estimate_memory(spec.params_b, precision or default)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        info = params_from_hf_dir(path)
        return estimate_memory(info[0], precision or info[1]) if info else None
    if looks_like_path(name):
        raise EngineUnavailableError(f"model file not found: {name}", engine=engine)
    return None
