"""Pipeline steps. Each is a callable with one signature, ``await step(rows)``, that works on
the rows still alive and records a row's failure on the row, so other rows go on.

    TemplateStep   renders the prompt (system + user) from the row's fields
    GenerateStep   runs the prompts through a fallback chain, in one batched call
    PostprocessStep applies processors to the last generated field; may re-ask the chain,
                   then (``fallback_on: [invalid_output]``) ask the chain's next engines

A whole batch goes through a step at once, so local engines batch and remote
engines fill their ``num_workers``.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inferline.core.configs import InferenceConfig
from inferline.core.types import Conversation, Message, Role
from inferline.engines.base import Completion, Usage
from inferline.engines.cache import CachedEngine
from inferline.errors import AllEnginesFailedError, InferlineError, OutputValidationError
from inferline.pipelines.fallback import FallbackChain
from inferline.pipelines.postprocess import Processor
from inferline.pipelines.template import PromptTemplate

REASK = ("Your answer was not valid ({error}). Answer again, following the instructions "
         "exactly, with nothing else.")


@dataclass(slots=True)
class Row:
    """One row on its way through the steps, and then its result: ``output`` (the input
    row, each generated field and ``_meta``) or the ``error`` that stopped it."""

    index: int
    fields: dict[str, Any]  # the input row, plus each generated field
    error: InferlineError | None = None
    output: dict[str, Any] | None = None  # set when the row has gone through every step
    calls: list[Completion] = field(default_factory=list)  # each generate call's answer
    prompt: Conversation | None = None  # what the last generate call sent
    question: Conversation | None = None  # what the last generate step's template asked

    def reject(self, error: OutputValidationError) -> None:
        """Mark the last answer's attempt (a chain's answer has one) as rejected, saying why
        and what it was."""
        done = self.calls[-1]
        *before, last = done.attempts
        done.attempts = [*before, dataclasses.replace(
            last, error=type(error).__name__,
            message=f"{error.reason}; answer: {error.output[:200]!r}")]

    def reask(self, reason: str) -> Conversation:
        """The last exchange, plus a turn that says why its answer was rejected."""
        assert self.prompt is not None
        return self.prompt.append(Message(role=Role.ASSISTANT, content=self.calls[-1].text)).append(
            Message(role=Role.USER, content=REASK.format(error=reason)))

    @property
    def served_by(self) -> list[str]:
        """The engine that served each generate call, in order."""
        return [c.served_by for c in self.calls]

    @property
    def usage(self) -> Usage:
        """Tokens over every generate call."""
        return Usage(sum(c.usage.prompt_tokens for c in self.calls),
                     sum(c.usage.completion_tokens for c in self.calls))

    @property
    def cost(self) -> float:
        """USD over every generate call, rejected answers and re-asks included (all paid)."""
        return sum((c.cost.usd for c in self.calls), 0.0)

    def meta(self) -> dict[str, Any]:
        """``_meta``: the engine that gave the last answer, every attempt, the tokens, the
        cost."""
        if len(self.calls) == 1:
            return self.calls[0].provenance()
        return {"served_by": self.calls[-1].served_by,
                "attempts": [a for c in self.calls for a in c.provenance()["attempts"]],
                "usage": self.usage.as_dict(), "cost": self.cost}


def alive(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.error is None]


class TemplateStep:
    def __init__(self, user: PromptTemplate, system: PromptTemplate | None) -> None:
        self.user, self.system = user, system

    async def __call__(self, rows: Sequence[Row]) -> None:
        for row in alive(rows):
            try:
                system = self.system.render(row.fields) if self.system is not None else None
                row.prompt = Conversation.from_prompt(self.user.render(row.fields), system)
            except InferlineError as exc:
                row.error = exc


class GenerateStep:
    def __init__(self, chain: FallbackChain, config: InferenceConfig, output: str) -> None:
        self.chain, self.config, self.output = chain, config, output

    async def __call__(self, rows: Sequence[Row]) -> None:
        live = alive(rows)
        for row in live:
            row.question = row.prompt
        await self.generate(live, [r.prompt for r in live])  # type: ignore[misc]

    async def generate(self, rows: Sequence[Row], prompts: Sequence[Conversation],
                       chain: FallbackChain | None = None) -> None:
        """Run ``prompts[i]`` for ``rows[i]``; each row gets its answer or its error."""
        outcomes = await (chain or self.chain).agenerate(prompts, self.config)
        for row, prompt, outcome in zip(rows, prompts, outcomes, strict=True):
            if isinstance(outcome, Completion):
                row.prompt = prompt
                row.fields[self.output] = outcome.text
                row.calls.append(outcome)
            else:
                row.error = outcome


class PostprocessStep:
    """Processors in order on the last generated field. With ``reask`` > 0, a row whose
    output is invalid is sent back to the same engine's chain with the error, that many
    times. Then, if the chain falls back on ``invalid_output``, the row's question goes to
    the engines after the one that gave the last answer, each with the same re-asks. Every
    rejected answer stays in ``_meta.attempts`` as an ``OutputValidationError``."""

    def __init__(self, processors: Sequence[Processor], generate: GenerateStep, reask: int) -> None:
        self.processors, self.generate, self.reask = list(processors), generate, reask

    async def __call__(self, rows: Sequence[Row]) -> None:
        pending = alive(rows)
        while pending:
            pending = await self._fall_back(await self._validate(pending))

    async def _validate(self, rows: list[Row]) -> list[tuple[Row, OutputValidationError]]:
        """The rows still invalid after their re-asks, with why."""
        for turn in range(self.reask + 1):
            invalid = [(row, err) for row in rows if (err := self._apply(row)) is not None]
            rows = [row for row, _ in invalid]
            await self._forget(rows)
            if not invalid or turn == self.reask:
                return invalid
            await self.generate.generate(rows, [row.reask(err.reason) for row, err in invalid])
            rows = alive(rows)
        return []

    async def _forget(self, rows: list[Row]) -> None:
        """Rejected answers leave the response cache, so a rerun asks again."""
        asked: defaultdict[CachedEngine, list[Conversation]] = defaultdict(list)
        for row in rows:
            engine = self.generate.chain.member(row.calls[-1].served_by)
            if isinstance(engine, CachedEngine) and row.prompt is not None:
                asked[engine].append(row.prompt)
        for engine, prompts in asked.items():
            await engine.aforget(prompts, self.generate.config)

    async def _fall_back(self, invalid: list[tuple[Row, OutputValidationError]]) -> list[Row]:
        """Each invalid row asked again of the engines after the one that answered it; the
        rows that got an answer (to validate again). A row with no engine left fails."""
        chain = self.generate.chain
        falls_back = "invalid_output" in chain.settings.fallback_on
        groups: dict[FallbackChain, list[Row]] = {}
        for row, err in invalid:
            rest = chain.after(row.calls[-1].served_by) if falls_back else None
            if rest is None:
                row.error = err
            else:
                groups.setdefault(rest, []).append(row)  # after() gives one chain per name
        answered = []
        for rest, rows in groups.items():
            rejected = {row.index: [a for c in row.calls for a in c.attempts] for row in rows}
            await self.generate.generate(rows, [row.question for row in rows],  # type: ignore[misc]
                                         chain=rest)
            for row in rows:
                if isinstance(row.error, AllEnginesFailedError):
                    row.error = AllEnginesFailedError(chain.name, rejected[row.index]
                                                      + row.error.attempts)
            answered += alive(rows)
        return answered

    def _apply(self, row: Row) -> OutputValidationError | None:
        """Process the field the generate step wrote (a live row's last answer)."""
        value = row.fields[self.generate.output]
        try:
            for process in self.processors:
                value = process(value)
        except OutputValidationError as exc:
            row.reject(exc)
            return exc
        row.fields[self.generate.output] = value
        return None
