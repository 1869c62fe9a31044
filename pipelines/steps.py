"""Pipeline steps. Each is a callable with one signature, ``await step(rows)``, that works on
the rows still alive and records a row's failure on the row, so other rows go on.

    TemplateStep   renders the prompt (system + user) from the row's fields
    GenerateStep   runs the prompts through a fallback chain, in one batched call
    PostprocessStep applies processors to the last generated field; may re-ask the chain

A whole batch goes through a step at once, so local engines batch and remote
engines fill their ``num_workers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inferline.core.configs import InferenceConfig
from inferline.core.types import Conversation, Message, Role
from inferline.engines.base import Completion, Generator, Usage
from inferline.errors import InferlineError, OutputValidationError
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
    prompt: Conversation | None = None  # what the last generate step sent
    target: str | None = None  # the field the last generate call wrote

    def record(self, output: str, done: Completion) -> None:
        self.fields[output] = done.text
        self.target = output
        self.calls.append(done)

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

    def meta(self) -> dict[str, Any]:
        """``_meta``: the engine that gave the last answer, every attempt, the tokens."""
        if len(self.calls) == 1:
            return self.calls[0].provenance()
        return {"served_by": self.calls[-1].served_by,
                "attempts": [a for c in self.calls for a in c.provenance()["attempts"]],
                "usage": self.usage.as_dict()}


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
    def __init__(self, chain: Generator, config: InferenceConfig, output: str) -> None:
        self.chain, self.config, self.output = chain, config, output

    async def __call__(self, rows: Sequence[Row]) -> None:
        live = alive(rows)
        await self.generate(live, [r.prompt for r in live])  # type: ignore[misc]

    async def generate(self, rows: Sequence[Row], prompts: Sequence[Conversation]) -> None:
        """Run ``prompts[i]`` for ``rows[i]``; each row gets its answer or its error."""
        outcomes = await self.chain.agenerate(prompts, self.config)
        for row, prompt, outcome in zip(rows, prompts, outcomes, strict=True):
            if isinstance(outcome, Completion):
                row.prompt = prompt
                row.record(self.output, outcome)
            else:
                row.error = outcome


class PostprocessStep:
    """Processors in order on the last generated field. With ``reask`` > 0, a row whose
    output is invalid is sent back to the same chain with the error, that many times."""

    def __init__(self, processors: Sequence[Processor], generate: GenerateStep, reask: int) -> None:
        self.processors, self.generate, self.reask = list(processors), generate, reask

    async def __call__(self, rows: Sequence[Row]) -> None:
        pending = alive(rows)
        for turn in range(self.reask + 1):
            invalid = [(row, err) for row in pending if (err := self._apply(row)) is not None]
            if not invalid or turn == self.reask:
                for row, err in invalid:
                    row.error = err
                return
            pending = [row for row, _ in invalid]
            await self.generate.generate(pending, [row.reask(err.reason) for row, err in invalid])
            pending = alive(pending)

    def _apply(self, row: Row) -> OutputValidationError | None:
        value = row.fields[row.target]  # type: ignore[index]
        try:
            for process in self.processors:
                value = process(value)
        except OutputValidationError as exc:
            return exc
        row.fields[row.target] = value  # type: ignore[index]
        return None
