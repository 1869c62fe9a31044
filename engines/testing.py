"""An engine for your tests: scripted answers and failures, no model, no network.

Like httpx's ``MockTransport``: put it in a chain, a pipeline or the gateway
where a real engine would go, and assert on what it was sent.

    >>> import asyncio
    >>> from inferline.core.types import Conversation
    >>> engine = FakeEngine("fake", reply=lambda prompt, nth: prompt.upper())
    >>> [out] = engine.infer([Conversation.from_prompt("hi")])
    >>> out.last_message().text, out.metadata["served_by"], len(engine.seen)
    ('HI', 'fake', 1)
    >>> down = FakeEngine("down", unavailable="no GPU")
    >>> [outcome] = asyncio.run(down.agenerate([Conversation.from_prompt("hi")]))
    >>> type(outcome).__name__, str(outcome)
    ('EngineUnavailableError', 'down: no GPU')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from inferline.core.configs import GenerationParams, InferenceEngineType, ModelParams
from inferline.core.types import Conversation
from inferline.engines.base import BaseInferenceEngine, Completion, Outcome, Usage
from inferline.errors import EngineUnavailableError, InferlineError

Reply = Callable[[str, int], str]


class FakeEngine(BaseInferenceEngine):
    """Answers ``reply(first message's text, nth time that text was seen)`` (by default
    "<name>: <last message>"); fails the backend calls numbered in ``fail`` (1-based)
    with the given errors; ``unavailable`` makes its preflight fail with that reason.
    ``seen`` records every conversation it was sent; ``calls`` counts backend calls."""

    engine_type = InferenceEngineType.REMOTE
    supported_params = frozenset(GenerationParams.model_fields)

    def __init__(self, name: str = "fake", *, reply: Reply | None = None,
                 fail: dict[int, InferlineError] | None = None, unavailable: str | None = None,
                 usage: Usage | None = None, supported: frozenset[str] | None = None) -> None:
        if supported is not None:
            self.supported_params = supported  # type: ignore[misc]
        super().__init__(ModelParams(model_name="fake"), name=name)
        self.reply, self.fail, self.unavailable = reply, fail or {}, unavailable
        self.usage = usage or Usage(3, 2)
        self.seen: list[Conversation] = []
        self.calls = 0

    def preflight(self) -> None:
        if self.unavailable:
            raise EngineUnavailableError(self.unavailable, engine=self.name)

    async def _agenerate(self, conversations: Sequence[Conversation],
                         params: GenerationParams) -> list[Outcome]:
        self.calls += 1
        if self.calls in self.fail:
            raise self.fail[self.calls]
        out: list[Outcome] = []
        for conv in conversations:
            self.seen.append(conv)
            first = conv.messages[0].text
            if self.reply is None:
                text = f"{self.name}: {conv.messages[-1].text}"
            else:
                text = self.reply(first, sum(c.messages[0].text == first for c in self.seen))
            out.append(Completion(text, "stop", Usage(self.usage.prompt_tokens,
                                                      self.usage.completion_tokens)))
        return out
