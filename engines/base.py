"""The engine contract every backend implements.

A backend writes two things: ``_agenerate`` (a batch of conversations in, one
``Completion`` per conversation out, in order) and, if it can stream,
``_astream``. Everything else -- parameter checks, lazy loading, per-row
results, the sync ``infer`` -- is written here once.

    async with LlamaCppInferenceEngine(ModelParams(model_name="smollm2-135m")) as engine:
        [out] = await engine.ainfer([Conversation.from_prompt("Hi")])
    engine.infer([...])                  # the same, from sync code
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from inferline.core.configs import (
    GenerationParams,
    InferenceConfig,
    InferenceEngineType,
    ModelParams,
)
from inferline.core.portal import portal
from inferline.core.types import Conversation, Message, Role
from inferline.errors import EngineError, InferlineError, UnsupportedParameterError


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class Completion:
    """One generated answer. ``finish_reason`` is "stop" or "length" (or a backend's own)."""

    text: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass
class StreamChunk:
    """A piece of a streamed answer; the last chunk carries finish_reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    engine: str | None = None  # set by a fallback chain: the engine that produced it


@dataclass
class RowResult:
    """The outcome of one input row: its output conversation, or the error that sank it."""

    index: int
    conversation: Conversation | None = None
    error: InferlineError | None = None


class BaseInferenceEngine(ABC):
    """Base of all engines. Construction is cheap: no weights, no network."""

    engine_type: ClassVar[InferenceEngineType]
    #: Generation parameters this engine honours (names of ``GenerationParams`` fields).
    supported_params: ClassVar[frozenset[str]] = frozenset({"max_new_tokens"})
    is_local: ClassVar[bool] = False
    can_stream: ClassVar[bool] = False
    supports_images: ClassVar[bool] = False
    requires_gpu: ClassVar[bool] = False

    def __init__(self, model_params: ModelParams, *,
                 generation_params: GenerationParams | None = None,
                 name: str | None = None) -> None:
        self.model_params = model_params
        self.generation_params = generation_params or GenerationParams()
        self.name = name or type(self).__name__
        self._check_params(self.generation_params)
        self._loaded = False
        self._load_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model_params.model_name!r})"

    # -- parameters -------------------------------------------------------------

    def get_supported_params(self) -> set[str]:
        """The ``GenerationParams`` fields this engine honours."""
        return set(self.supported_params)

    def _check_params(self, params: GenerationParams) -> None:
        for key, value in params.non_default().items():
            if key not in self.supported_params:
                raise UnsupportedParameterError(self.name, key, value)

    def _generation(self, config: InferenceConfig | None) -> GenerationParams:
        """The engine's defaults, overridden by the fields ``config`` sets explicitly."""
        if config is None:
            return self.generation_params
        # attributes, not model_dump(): model_copy does not re-validate, so nested
        # models (guided_decoding) must stay models
        overrides = {k: getattr(config.generation, k) for k in config.generation.model_fields_set}
        params = self.generation_params.model_copy(update=overrides) if overrides else self.generation_params
        self._check_params(params)
        return params

    # -- lifecycle --------------------------------------------------------------

    def preflight(self) -> None:
        """Cheap check that the engine can run here; raises ``EngineUnavailableError``.

        Looks for packages, files, keys and memory. Loads nothing.
        """

    def load(self) -> None:
        """Load weights / open resources, once. Later calls return at once."""
        if self._loaded:
            return
        with self._load_lock:
            if not self._loaded:
                self.preflight()
                self._load()
                self._loaded = True

    def _load(self) -> None:
        """Backend hook for ``load``; blocking work is fine here."""

    async def _aensure_loaded(self) -> None:
        if not self._loaded:
            await asyncio.to_thread(self.load)

    async def aclose(self) -> None:
        """Release sessions, processes and memory. The engine may be loaded again later."""

    def close(self) -> None:
        portal.run(self.aclose())

    async def __aenter__(self) -> BaseInferenceEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> BaseInferenceEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference --------------------------------------------------------------

    @abstractmethod
    async def _agenerate(self, conversations: Sequence[Conversation],
                         params: GenerationParams) -> list[Completion]:
        """One completion per conversation, in order. Raise ``EngineError`` subclasses."""

    async def _astream(self, conversation: Conversation,
                       params: GenerationParams) -> AsyncIterator[StreamChunk]:
        """Backends that stream override this; the default yields one whole chunk."""
        [done] = await self._agenerate([conversation], params)
        yield StreamChunk(done.text, done.finish_reason, done.usage)

    def _output(self, conversation: Conversation, completion: Completion) -> Conversation:
        return conversation.append(
            Message(role=Role.ASSISTANT, content=completion.text),
            usage=completion.usage.as_dict(), finish_reason=completion.finish_reason,
            engine=self.name,
        )

    async def aiter_results(self, conversations: Sequence[Conversation],
                            inference_config: InferenceConfig | None = None,
                            ) -> AsyncIterator[RowResult]:
        """Yield one ``RowResult`` per conversation as it completes (order not guaranteed).

        A failed row carries its error; the other rows still run. Local engines
        run ``generation.batch_size`` conversations per backend call (all by default).
        """
        params = self._generation(inference_config)
        await self._aensure_loaded()
        size = params.batch_size or max(len(conversations), 1)
        for start in range(0, len(conversations), size):
            chunk = conversations[start:start + size]
            try:
                completions = await self._agenerate(chunk, params)
            except EngineError as exc:
                for i in range(len(chunk)):
                    yield RowResult(start + i, error=exc)
                continue
            for i, (conv, done) in enumerate(zip(chunk, completions, strict=True)):
                yield RowResult(start + i, self._output(conv, done))

    async def ainfer(self, conversations: Sequence[Conversation],
                     inference_config: InferenceConfig | None = None) -> list[Conversation]:
        """All outputs in input order, or the first error (all-or-nothing)."""
        outputs: list[Conversation | None] = [None] * len(conversations)
        async for result in self.aiter_results(conversations, inference_config):
            if result.error is not None:
                raise result.error
            outputs[result.index] = result.conversation
        return outputs  # type: ignore[return-value]

    async def ainfer_partial(self, conversations: Sequence[Conversation],
                             inference_config: InferenceConfig | None = None) -> list[RowResult]:
        """Every row's result in input order; failures are returned, not raised."""
        results = [r async for r in self.aiter_results(conversations, inference_config)]
        return sorted(results, key=lambda r: r.index)

    async def astream(self, conversation: Conversation,
                      inference_config: InferenceConfig | None = None,
                      ) -> AsyncIterator[StreamChunk]:
        """Text chunks as they are generated; the last one has finish_reason and usage."""
        params = self._generation(inference_config)
        await self._aensure_loaded()
        async for chunk in self._astream(conversation, params):
            yield chunk

    def infer(self, conversations: Sequence[Conversation] | None = None,
              inference_config: InferenceConfig | None = None) -> list[Conversation]:
        """Sync ``ainfer``; safe inside a running event loop (it runs on a helper loop).

        With ``conversations`` None, reads ``inference_config.input_path``; with
        ``output_path`` set, writes each result as it completes and resumes a
        partial file (see ``inferline.core.batch``).
        """
        from inferline.core.batch import ainfer_files

        if conversations is None or (inference_config and inference_config.output_path):
            return portal.run(ainfer_files(self, conversations, inference_config))
        return portal.run(self.ainfer(conversations, inference_config))

    def infer_partial(self, conversations: Sequence[Conversation],
                      inference_config: InferenceConfig | None = None) -> list[RowResult]:
        return portal.run(self.ainfer_partial(conversations, inference_config))

    def describe(self) -> dict[str, Any]:
        """Capabilities, for ``inferline engines`` and the gateway's /ready."""
        return {"name": self.name, "type": self.engine_type.value, "local": self.is_local,
                "stream": self.can_stream, "images": self.supports_images,
                "loaded": self._loaded}
