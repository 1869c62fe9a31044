"""The one door into every engine, and the engine contract backends implement.

Everything that runs conversations -- an engine or a fallback chain -- is a
``Generator``: ``agenerate`` (a batch in, one ``Outcome`` per row out: a
``Completion`` or the typed error that sank that row, never raised) and
``astream``. The Oumi-named methods (``ainfer``, ``infer``, partial results,
file mode) are written once here, over ``agenerate``, and never overridden.

A backend writes ``_agenerate`` (one completion per conversation, in order;
it may raise an ``EngineError`` for the whole batch, or return one per row)
and, if it can stream, ``_astream``. Parameter checks and lazy loading are
done here.

    async with LlamaCppInferenceEngine(ModelParams(model_name="smollm2-135m")) as engine:
        [out] = await engine.ainfer([Conversation.from_prompt("Hi")])
        [outcome] = await engine.agenerate([Conversation.from_prompt("Hi")])  # never raises
    engine.infer([...])                  # the same, from sync code
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from inferline.core.configs import (
    GenerationParams,
    InferenceConfig,
    InferenceEngineType,
    ModelParams,
)
from inferline.core.cost import FREE, Cost, Price
from inferline.core.portal import portal
from inferline.core.types import Conversation, Message, Role, ToolCall, ToolCallDelta
from inferline.engines import _wait as waits
from inferline.errors import (
    Attempt,
    EngineUnavailableError,
    InferlineError,
    UnsupportedParameterError,
)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass(slots=True)
class Completion:
    """One generated answer and where it came from.

    ``finish_reason`` is "stop" or "length" (or a backend's own). ``served_by``
    names the engine that wrote it; ``attempts`` lists every try a fallback chain
    made for the row, the serving one last (empty for a plain engine call).
    """

    text: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    served_by: str = ""
    attempts: Sequence[Attempt] = ()
    cache: str | None = None  # "hit" when a response cache answered (``engines/cache.py``)
    #: the functions the model asked to call (finish_reason "tool_calls")
    tool_calls: Sequence[ToolCall] = ()
    #: what this answer cost (``inferline.core.cost``); FREE for a cache hit or a replay,
    #: which build their completions without one
    cost: Cost = FREE

    def provenance(self) -> dict[str, Any]:
        """``served_by``, ``attempts`` and ``usage`` (and ``cache``, when set) as JSON-ready
        values (for the edges)."""
        attempts = self.attempts or [Attempt(self.served_by, None, None, 0.0)]
        out = {"served_by": self.served_by, "attempts": [a.as_dict() for a in attempts],
               "usage": self.usage.as_dict(), "cost": self.cost.usd}
        return out if self.cache is None else {**out, "cache": self.cache}

    def as_chunk(self, attempts: list[Attempt] | None = None) -> StreamChunk:
        """The whole answer as one (last) stream chunk; each tool call is one whole piece."""
        calls = [ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(self.tool_calls)]
        return StreamChunk(self.text, self.finish_reason, self.usage, self.served_by or None,
                           attempts, tool_calls=calls or None)


#: ``GenerationParams`` fields an engine takes only when it ``can_call_tools``
TOOL_PARAMS = frozenset({"tools", "tool_choice"})

#: what ``agenerate`` gives for each row
Outcome = Completion | InferlineError


@dataclass(slots=True)
class StreamChunk:
    """A piece of a streamed answer; the last chunk carries finish_reason and usage
    (and, through a chain, ``attempts``)."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    served_by: str | None = None
    attempts: list[Attempt] | None = None
    cost: Cost | None = None  # on the last chunk
    tool_calls: list[ToolCallDelta] | None = None  # pieces of tool calls, as generated


@dataclass(slots=True)
class RowResult:
    """One input row's result for ``ainfer_partial``: its output conversation, or its error."""

    index: int
    conversation: Conversation | None = None
    error: InferlineError | None = None


def output_conversation(conversation: Conversation, done: Completion) -> Conversation:
    """``conversation`` plus the answer; provenance in ``metadata`` (the Oumi edge)."""
    meta: dict[str, Any] = {"usage": done.usage.as_dict(), "finish_reason": done.finish_reason,
                            "served_by": done.served_by, "cost": done.cost.usd}
    if done.attempts:
        meta["attempts"] = [a.as_dict() for a in done.attempts]
    answer = Message(role=Role.ASSISTANT, content=done.text, tool_calls=done.tool_calls or None)
    return conversation.append(answer, **meta)


class Generator(ABC):
    """Anything that runs conversations: an engine or a fallback chain."""

    name: str

    @abstractmethod
    async def agenerate(self, conversations: Sequence[Conversation],
                        inference_config: InferenceConfig | None = None) -> list[Outcome]:
        """One outcome per conversation, in order: a ``Completion`` or the row's error."""

    @abstractmethod
    def astream(self, conversation: Conversation,
                inference_config: InferenceConfig | None = None,
                ) -> AsyncGenerator[StreamChunk, None]:
        """Text chunks as generated; the last has finish_reason and usage. Errors raise."""

    # Hooks that may do nothing, so not abstract (B027).

    def preflight(self) -> None:  # noqa: B027
        """Cheap check that this can run here; raises ``EngineUnavailableError``.

        Looks for packages, files, keys and memory. Loads nothing.
        """

    async def aload(self) -> None:  # noqa: B027
        """Load whatever must be loaded before the first call."""

    async def aclose(self) -> None:  # noqa: B027
        """Release sessions, processes and memory."""

    # -- adapters over agenerate: written once, never overridden ---------------------

    async def ainfer(self, conversations: Sequence[Conversation],
                     inference_config: InferenceConfig | None = None) -> list[Conversation]:
        """All outputs in input order, or the first row's error raised (after every row ran)."""
        outcomes = await self.agenerate(conversations, inference_config)
        for outcome in outcomes:
            if not isinstance(outcome, Completion):
                raise outcome
        return [output_conversation(c, o)  # type: ignore[arg-type]
                for c, o in zip(conversations, outcomes, strict=True)]

    async def ainfer_partial(self, conversations: Sequence[Conversation],
                             inference_config: InferenceConfig | None = None) -> list[RowResult]:
        """Every row's result in input order; failures are returned, not raised."""
        outcomes = await self.agenerate(conversations, inference_config)
        return [RowResult(i, output_conversation(c, o)) if isinstance(o, Completion)
                else RowResult(i, error=o)
                for i, (c, o) in enumerate(zip(conversations, outcomes, strict=True))]

    def infer(self, conversations: Sequence[Conversation] | None = None,
              inference_config: InferenceConfig | None = None) -> list[Conversation]:
        """Sync ``ainfer``; safe inside a running event loop (it runs on a helper loop).

        With ``conversations`` None, reads ``inference_config.input_path``; with
        ``output_path`` set, writes each row as its wave completes and resumes a
        partial file (the same runner as ``inferline run``).
        """
        if conversations is None or (inference_config and inference_config.output_path):
            from inferline.pipelines.runner import ainfer_file

            return portal.run(ainfer_file(self, conversations, inference_config))
        return portal.run(self.ainfer(conversations, inference_config))

    def infer_partial(self, conversations: Sequence[Conversation],
                      inference_config: InferenceConfig | None = None) -> list[RowResult]:
        return portal.run(self.ainfer_partial(conversations, inference_config))

    def close(self) -> None:
        portal.run(self.aclose())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: a question any instruct model answers, and a word its answer must contain. The prompt is
#: one a 4-bit 135M model answers by a wide margin (~1.9 logits), so rounding cannot flip it
SELF_CHECK = (Conversation.from_prompt("What is the capital of France?",
                                       "You are a helpful assistant. Answer in one word."),
              "paris")


class BaseInferenceEngine(Generator):
    """Base of all engines. Construction is cheap: no weights, no network.

    With ``self_check`` set (settings: ``engines.<name>.self_check``), the first load
    also asks ``SELF_CHECK``'s question; a wrong answer (a backend build that computes
    garbage on this CPU) makes the engine unavailable, with the answer as the reason.
    """

    engine_type: ClassVar[InferenceEngineType]
    #: Generation parameters this engine honours (names of ``GenerationParams`` fields).
    supported_params: ClassVar[frozenset[str]] = frozenset({"max_new_tokens"})
    is_local: ClassVar[bool] = False
    can_stream: ClassVar[bool] = False
    supports_images: ClassVar[bool] = False
    #: takes ``tools``/``tool_choice`` and conversations with tool calls and results
    can_call_tools: ClassVar[bool] = False
    self_check: bool = False
    price: Price = Price()  # settings: ``engines.<name>.price``; what each answer costs

    def __init__(self, model_params: ModelParams, *,
                 generation_params: GenerationParams | None = None,
                 name: str | None = None) -> None:
        self.model_params = model_params
        self.name = name or type(self).__name__
        self.generation_params = self._check_params(generation_params or GenerationParams())
        self._loaded = False
        self._load_lock = threading.Lock()
        self._checked: str | EngineUnavailableError | None = None  # the self-check's answer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model_params.model_name!r})"

    # -- parameters -------------------------------------------------------------

    def get_supported_params(self) -> set[str]:
        """The ``GenerationParams`` fields this engine honours (``tools`` and
        ``tool_choice`` exactly when it ``can_call_tools``)."""
        return set(self.supported_params - TOOL_PARAMS) | (
            TOOL_PARAMS if self.can_call_tools else set())

    def _check_params(self, params: GenerationParams) -> GenerationParams:
        """``params`` if this engine honours them all (a best-effort ``guided_decoding`` it
        cannot do is dropped); else ``UnsupportedParameterError``."""
        guided = params.guided_decoding
        if guided is not None and not guided.required and (
                "guided_decoding" not in self.supported_params):
            params = params.model_copy(update={"guided_decoding": None})
        if not (asked := params.non_default()):
            return params
        supported = self.get_supported_params()
        for key, value in asked.items():
            if key not in supported:
                names = key == "tools" and [t.name for t in value]
                raise UnsupportedParameterError(self.name, key, names or value)
        return params

    def _generation(self, config: InferenceConfig | None) -> GenerationParams:
        """The engine's defaults, overridden by the fields ``config`` sets explicitly."""
        if config is None or not config.generation.model_fields_set:
            return self.generation_params
        # attributes, not model_dump(): model_copy does not re-validate, so nested
        # models (guided_decoding) must stay models
        overrides = {k: getattr(config.generation, k) for k in config.generation.model_fields_set}
        return self._check_params(self.generation_params.model_copy(update=overrides))

    # -- lifecycle --------------------------------------------------------------

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

    async def aload(self) -> None:
        if not self._loaded:
            await asyncio.to_thread(self.load)
        if self.self_check and self._checked is None:
            try:
                self._checked = await self.acheck()
            except EngineUnavailableError as exc:
                self._checked = exc
        if isinstance(self._checked, EngineUnavailableError):
            raise self._checked

    async def acheck(self) -> str:
        """Ask ``SELF_CHECK``'s question (greedy); its answer, or ``EngineUnavailableError``."""
        if not self._loaded:
            await asyncio.to_thread(self.load)
        conversation, expect = SELF_CHECK
        question = conversation.messages[-1].text
        [done] = await self._agenerate([conversation], GenerationParams(max_new_tokens=16))
        if not isinstance(done, Completion):
            raise EngineUnavailableError(f"self-check failed: {done}", engine=self.name)
        if expect not in done.text.lower():
            raise EngineUnavailableError(
                f"self-check failed: asked {question!r}, got {done.text.strip()[:80]!r}; "
                "this build may compute wrong results on this CPU", engine=self.name)
        return done.text.strip()

    # -- the one primitive -------------------------------------------------------

    async def agenerate(self, conversations: Sequence[Conversation],
                        inference_config: InferenceConfig | None = None) -> list[Outcome]:
        """One outcome per conversation, in order; never raises for a row's failure.

        A parameter this engine cannot honour fails each row with
        ``UnsupportedParameterError`` (the engine stays available). Local engines
        run ``generation.batch_size`` conversations per backend call (all by default).
        """
        try:
            params = self._generation(inference_config)
            await self.aload()
        except InferlineError as exc:
            return [exc] * len(conversations)
        size = params.batch_size or max(len(conversations), 1)
        outcomes: list[Outcome] = []
        for start in range(0, len(conversations), size):
            chunk = conversations[start:start + size]
            began = time.monotonic()
            try:
                done = list(await self._agenerate(chunk, params))
            except InferlineError as exc:
                outcomes.extend([exc] * len(chunk))
                continue
            took = time.monotonic() - began
            if self.is_local:  # remote engines count their wait at the HTTP layer
                waits.add(took)
            share = took / len(chunk)  # each row's part of the wall time
            for outcome in done:
                if isinstance(outcome, Completion):
                    outcome.served_by, outcome.cost = self.name, self._cost(outcome.usage, share)
            outcomes.extend(done)
        return outcomes

    def _cost(self, usage: Usage, seconds: float) -> Cost:
        return self.price.cost(prompt_tokens=usage.prompt_tokens,
                               completion_tokens=usage.completion_tokens, seconds=seconds)

    async def astream(self, conversation: Conversation,
                      inference_config: InferenceConfig | None = None,
                      ) -> AsyncGenerator[StreamChunk, None]:
        params = self._generation(inference_config)
        await self.aload()
        began = time.monotonic()
        chunks = self._astream(conversation, params)
        async for chunk in waits.timed(chunks) if self.is_local else chunks:
            chunk.served_by = self.name
            if chunk.finish_reason is not None:
                chunk.cost = self._cost(chunk.usage or Usage(), time.monotonic() - began)
            yield chunk

    # -- backend hooks -------------------------------------------------------------

    @abstractmethod
    async def _agenerate(self, conversations: Sequence[Conversation],
                         params: GenerationParams) -> Sequence[Outcome]:
        """One outcome per conversation, in order; raise an ``EngineError`` to fail them all."""

    async def _astream(self, conversation: Conversation,
                       params: GenerationParams) -> AsyncIterator[StreamChunk]:
        """Backends that stream override this; the default yields one whole chunk."""
        [done] = await self._agenerate([conversation], params)
        if not isinstance(done, Completion):
            raise done
        yield done.as_chunk()

    def describe(self) -> dict[str, Any]:
        """Capabilities, for ``inferline engines`` and the gateway's /ready."""
        return {"name": self.name, "type": self.engine_type.value, "local": self.is_local,
                "stream": self.can_stream, "images": self.supports_images,
                "tools": self.can_call_tools, "loaded": self._loaded}
