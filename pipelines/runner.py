"""The one file runner: a pipeline (or one engine or chain, as a one-step job) over a JSONL
file, with exactly-once output that survives a crash, and a summary.

Rows go through the job in waves of ``concurrency`` (so local engines batch
and remote ones fill their workers). Each output row carries ``_row``, its index
among the input's non-blank lines, and is appended and flushed as its wave ends,
in input order. A rerun skips the rows already written. Rows that fail are
reported on stderr and in ``<output>.errors.jsonl`` (rewritten each run) and are
tried again by the next run; they never sink the other rows. With ``max_cost``
(USD), no wave starts once this run has spent that much: it stops within one wave
of the cap, and a rerun goes on from there with a cap of its own.

    summary = await arun_file(pipeline, "in.jsonl", "out.jsonl", concurrency=32)
    print("\\n".join(summary.lines()))
    outputs = await ainfer_file(engine, None, InferenceConfig(input_path=..., output_path=...))

``engine.infer(None, config)`` (the seed's file mode) is ``ainfer_file``: each
input line is a conversation, each output line that conversation with the answer,
its ``metadata`` and ``_row``.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from pydantic import ValidationError

from inferline.core.batch import ResumableJsonlWriter, progress_bar
from inferline.core.configs import InferenceConfig
from inferline.core.cost import usd
from inferline.core.types import Conversation, dumps_row, read_jsonl
from inferline.engines.base import Completion, Generator, output_conversation
from inferline.errors import ConfigurationError, InferlineError, InputError
from inferline.pipelines.fallback import FallbackChain
from inferline.pipelines.steps import Row, alive

ROW = "_row"


@dataclass
class Summary:
    rows: int = 0  # rows read from the input
    skipped: int = 0  # already written by an earlier run
    succeeded: int = 0
    failed: int = 0
    engines: Counter[str] = field(default_factory=Counter)  # generate calls served, per engine
    tokens: Counter[str] = field(default_factory=Counter)  # prompt_tokens, completion_tokens
    seconds: float = 0.0
    first_error: InferlineError | None = None
    #: USD per engine over every generate call of this run (rejected answers too: all paid)
    costs: dict[str, float] = field(default_factory=dict)
    max_cost: float | None = None  # the run's cap (``--max-cost``), if any
    stopped: bool = False  # the cap stopped it with rows left to run

    @property
    def cost(self) -> float:
        return sum(self.costs.values(), 0.0)

    def lines(self) -> list[str]:
        engines = ", ".join(f"{name} {n}" for name, n in self.engines.most_common()) or "none"
        rate = (self.succeeded + self.failed) / self.seconds if self.seconds else 0.0
        spent = sorted(self.costs.items(), key=lambda item: -item[1])
        costs = ", ".join(f"{name} {usd(c)}" for name, c in spent)
        lines = [(f"rows: {self.rows} ({self.succeeded} ok, {self.failed} failed, "
                  f"{self.skipped} already done)"),
                 f"served by: {engines}",
                 (f"tokens: {self.tokens['prompt_tokens']} prompt, "
                  f"{self.tokens['completion_tokens']} completion"),
                 f"time: {self.seconds:.1f} s ({rate:.2f} rows/s)"]
        if self.costs:  # a runner that does not count cost (Ray's) says nothing rather than $0
            lines.insert(3, f"cost: {usd(self.cost)} ({costs})")
        if self.stopped:
            lines.append(
                f"stopped at --max-cost {usd(self.max_cost or 0.0)}: spent {usd(self.cost)} "
                f"this run; {self.succeeded + self.skipped} rows done ({self.succeeded} now, "
                f"{self.skipped} before), {self.failed} failed, the rest not run; rerun to "
                "continue (a rerun's cap counts only its own spend)")
        return lines


class Job(Protocol):
    """What the runner runs: a pipeline, or ``ConversationJob`` (one engine or chain)."""

    name: str
    chains: list[FallbackChain]

    async def arun_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Row]: ...


class ConversationJob:
    """Conversations through one engine or chain: the seed's file mode as a one-step job."""

    def __init__(self, generator: Generator, config: InferenceConfig | None) -> None:
        self.generator, self.config, self.name = generator, config, generator.name
        self.chains = [generator] if isinstance(generator, FallbackChain) else []

    async def arun_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[Row]:
        out = [_conversation_row(i, row) for i, row in enumerate(rows)]
        live = alive(out)
        outcomes = await self.generator.agenerate([r.prompt for r in live], self.config)  # type: ignore[misc]
        for row, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, Completion):
                row.calls.append(outcome)
                done = output_conversation(row.prompt, outcome)  # type: ignore[arg-type]
                row.output = done.model_dump(mode="json", exclude_none=True)
            else:
                row.error = outcome
        return out


def _conversation_row(index: int, row: Mapping[str, Any]) -> Row:
    data = {k: v for k, v in row.items() if k != ROW}
    try:
        return Row(index, {}, prompt=Conversation.model_validate(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        return Row(index, {}, InputError(f"not a conversation: {key}: {err['msg']}"))


def iter_rows(path: str | Path) -> Iterator[tuple[int, int, Any]]:
    """``(row index, line number, row)`` per non-blank line; a bad line's row is an InputError."""
    with open(path, encoding="utf-8") as fh:
        index = 0
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            yield index, lineno, parse_line(path, lineno, line)
            index += 1


def parse_line(path: str | Path, lineno: int, line: str) -> Any:
    """One input line's row (a dict), or the InputError that says why it is not one."""
    try:
        row: Any = json.loads(line)
    except ValueError as exc:
        return InputError(f"{path}:{lineno}: not valid JSON ({exc})")
    if not isinstance(row, dict):
        return InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def _count_rows(path: str | Path) -> int:
    """Non-blank lines, for the progress bar's total (no parsing)."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


class _Sink:
    """Where results go: the resumable output file (or stdout) and the errors file."""

    def __init__(self, output: str | Path | None, errors: str | Path | None, restart: bool,
                 stdout: IO[str]) -> None:
        self.stdout, self.writer = stdout, None
        if output is not None:
            output = Path(output)
            if restart:
                output.unlink(missing_ok=True)
            self.writer = ResumableJsonlWriter(output)
            errors = errors or output.with_suffix(".errors.jsonl")
        self.errors_path = Path(errors) if errors else None
        self._errors: IO[str] | None = None

    def __enter__(self) -> _Sink:
        if self.writer is not None:
            self.writer.__enter__()
        if self.errors_path is not None:
            self.errors_path.parent.mkdir(parents=True, exist_ok=True)
            self._errors = open(self.errors_path, "w", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.__exit__(*exc)
        if self._errors is not None:
            self._errors.close()
            if self.errors_path and self.errors_path.stat().st_size == 0:
                self.errors_path.unlink()

    @property
    def done(self) -> set[Any]:
        return self.writer.done if self.writer is not None else set()

    def write_line(self, line: str) -> None:
        """One output line, already carrying its ``_row``."""
        if self.writer is not None:
            self.writer.write(line)
        else:
            print(line, file=self.stdout, flush=True)

    def fail(self, index: int, lineno: int, error: InferlineError, row: Any,
             summary: Summary) -> None:
        summary.failed += 1
        summary.first_error = summary.first_error or error
        self.report(*failure_report(index, lineno, error, row))

    def report(self, notice: str, record: str) -> None:
        """A failed row: ``notice`` on stderr, ``record`` in the errors file."""
        print(notice, file=sys.stderr, flush=True)
        if self._errors is not None:
            self._errors.write(record + "\n")
            self._errors.flush()


def failure_report(index: int, lineno: int, error: InferlineError, row: Any) -> tuple[str, str]:
    """A failed row's stderr line and its errors-file line (where it is reported)."""
    message = str(error).replace("\n", "; ")
    notice = f"inferline: row {index} (line {lineno}): {type(error).__name__}: {message}"
    return notice, dumps_row({ROW: index, "line": lineno, "error": {
        "type": type(error).__name__, "message": str(error)},
        "input": row if isinstance(row, dict) else None})


async def arun_file(job: Job, input_path: str | Path,
                    output_path: str | Path | None = None, *, concurrency: int = 64,
                    restart: bool = False, errors_path: str | Path | None = None,
                    stdout: IO[str] = sys.stdout, max_cost: float | None = None) -> Summary:
    """Run ``job`` over ``input_path``; rows go to ``output_path`` (or ``stdout``)."""
    if not Path(input_path).is_file():  # noqa: ASYNC240 -- one stat, before any work
        raise ConfigurationError("cannot read input file", file=str(input_path))
    total = _count_rows(input_path) if sys.stderr.isatty() else 0
    return await arun_rows(job, iter_rows(input_path), output_path, total=total,
                           concurrency=concurrency, restart=restart, errors_path=errors_path,
                           stdout=stdout, max_cost=max_cost)


async def arun_rows(job: Job, rows: Iterator[tuple[int, int, Any]],
                    output_path: str | Path | None = None, *, total: int = 0,
                    concurrency: int = 64, restart: bool = False,
                    errors_path: str | Path | None = None,
                    stdout: IO[str] = sys.stdout, max_cost: float | None = None) -> Summary:
    """Run ``job`` over ``(index, line, row)`` items, in waves of ``concurrency``; with
    ``max_cost``, no wave starts once the run has spent that much (``summary.stopped``)."""
    for chain in job.chains:
        chain.plan()  # logs each engine that cannot run here, and why, before any row
    summary, started = Summary(max_cost=max_cost), time.monotonic()
    with _Sink(output_path, errors_path, restart, stdout) as sink:
        bar = progress_bar(total, len(sink.done), desc=job.name)
        while wave := list(itertools.islice(rows, concurrency)):
            if max_cost is not None and summary.cost >= max_cost:
                summary.stopped = any(item[0] not in sink.done
                                      for item in itertools.chain(wave, rows))
                break
            bar.update(await _run_wave(job, wave, sink, summary))
        bar.close()
    summary.seconds = time.monotonic() - started
    return summary


async def _run_wave(job: Job, wave: list[tuple[int, int, Any]], sink: _Sink,
                    summary: Summary) -> int:
    """Run the rows of ``wave`` not done yet; returns how many it ran."""
    summary.rows += len(wave)
    todo = [(i, line, row) for i, line, row in wave if i not in sink.done]
    summary.skipped += len(wave) - len(todo)
    for index, lineno, row in todo:
        if isinstance(row, InputError):
            sink.fail(index, lineno, row, None, summary)
    good = [item for item in todo if not isinstance(item[2], InputError)]
    outcomes = await job.arun_batch([row for _, _, row in good])
    for (index, lineno, row), outcome in zip(good, outcomes, strict=True):
        summary.engines.update(outcome.served_by)
        for call in outcome.calls:
            summary.costs[call.served_by] = summary.costs.get(call.served_by, 0.0) + call.cost.usd
        usage = outcome.usage
        summary.tokens.update(prompt_tokens=usage.prompt_tokens,
                              completion_tokens=usage.completion_tokens)
        if outcome.error is not None:
            sink.fail(index, lineno, outcome.error, row, summary)
        else:
            summary.succeeded += 1
            sink.write_line(dumps_row({**outcome.output, ROW: index}))  # type: ignore[dict-item]
    return len(todo)


async def ainfer_file(generator: Generator, conversations: Sequence[Conversation] | None,
                      config: InferenceConfig | None) -> list[Conversation]:
    """The seed's file mode: ``config.input_path`` (or ``conversations``) through
    ``generator``; with ``config.output_path``, rows are appended as their wave ends and
    a rerun skips rows already written.

    Rows that fail for good are reported on stderr (and in ``<output>.errors.jsonl``) and
    do not stop the others; if any failed, the first error is raised after the rest ran.
    """
    if config is None or (conversations is None and not config.input_path):
        raise ConfigurationError("no input: pass conversations or set input_path", key="input_path")
    if not config.output_path:
        inputs = conversations if conversations is not None else read_jsonl(config.input_path)  # type: ignore[arg-type]
        return await generator.ainfer(inputs, config)
    job = ConversationJob(generator, config)
    if conversations is None:
        summary = await arun_file(job, config.input_path, config.output_path)  # type: ignore[arg-type]
    else:
        rows = ((i, i + 1, c.model_dump(mode="json", exclude_none=True))  # line counted from 1
                for i, c in enumerate(conversations))
        summary = await arun_rows(job, rows, config.output_path)
    if summary.first_error is not None:
        raise summary.first_error
    return [Conversation.model_validate(row) for row in _read_output(config.output_path)]


def _read_output(path: str | Path) -> list[dict[str, Any]]:
    """The output rows of a file run, in input order, without their ``_row``."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]
    rows.sort(key=lambda r: r[ROW])
    for row in rows:
        del row[ROW]
    return rows
