"""A pipeline over a JSONL file: exactly-once output that survives a crash, and a summary.

Rows go through the pipeline in waves of ``concurrency`` (so local engines batch
and remote ones fill their workers). Each output row carries ``_row``, its index
among the input's non-blank lines, and is appended and flushed as its wave ends,
in input order. A rerun skips the rows already written. Rows that fail are
reported on stderr and in ``<output>.errors.jsonl`` (rewritten each run) and are
tried again by the next run; they never sink the other rows.

    summary = await arun_file(pipeline, "in.jsonl", "out.jsonl", concurrency=32)
    print("\\n".join(summary.lines()))
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from inferline.pipelines.pipeline import Pipeline

from inferline.core.batch import ResumableJsonlWriter, progress_bar
from inferline.core.types import dumps_row
from inferline.errors import ConfigurationError, InferlineError, InputError

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

    def lines(self) -> list[str]:
        engines = ", ".join(f"{name} {n}" for name, n in self.engines.most_common()) or "none"
        rate = (self.succeeded + self.failed) / self.seconds if self.seconds else 0.0
        return [(f"rows: {self.rows} ({self.succeeded} ok, {self.failed} failed, "
                 f"{self.skipped} already done)"),
                f"served by: {engines}",
                (f"tokens: {self.tokens['prompt_tokens']} prompt, "
                 f"{self.tokens['completion_tokens']} completion"),
                f"time: {self.seconds:.1f} s ({rate:.2f} rows/s)"]


def iter_rows(path: str | Path) -> Iterator[tuple[int, int, Any]]:
    """``(row index, line number, row)`` per non-blank line; a bad line's row is an InputError."""
    with open(path, encoding="utf-8") as fh:
        index = 0
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
            except ValueError as exc:
                row = InputError(f"{path}:{lineno}: not valid JSON ({exc})")
            if not isinstance(row, dict | InputError):
                row = InputError(f"{path}:{lineno}: expected a JSON object, got "
                                 f"{type(row).__name__}")
            yield index, lineno, row
            index += 1


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
            self.writer = ResumableJsonlWriter(output, key_of=lambda obj: obj[ROW])
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
            self.writer.fsync()
            self.writer.__exit__(*exc)
        if self._errors is not None:
            self._errors.close()
            if self.errors_path and self.errors_path.stat().st_size == 0:
                self.errors_path.unlink()

    @property
    def done(self) -> set[Any]:
        return self.writer.done if self.writer is not None else set()

    def write(self, index: int, row: dict[str, Any]) -> None:
        line = dumps_row({**row, ROW: index})
        if self.writer is not None:
            self.writer.write(index, line)
        else:
            print(line, file=self.stdout, flush=True)

    def fail(self, index: int, lineno: int, error: InferlineError, row: Any) -> None:
        message = str(error).replace("\n", "; ")
        print(f"inferline: row {index} (line {lineno}): {type(error).__name__}: {message}",
              file=sys.stderr, flush=True)
        if self._errors is not None:
            self._errors.write(dumps_row({ROW: index, "line": lineno, "error": {
                "type": type(error).__name__, "message": str(error)},
                "input": row if isinstance(row, dict) else None}) + "\n")
            self._errors.flush()


async def arun_file(pipeline: Pipeline, input_path: str | Path,
                    output_path: str | Path | None = None, *, concurrency: int = 64,
                    restart: bool = False, errors_path: str | Path | None = None,
                    stdout: IO[str] = sys.stdout) -> Summary:
    """Run ``pipeline`` over ``input_path``; rows go to ``output_path`` (or ``stdout``)."""
    if not Path(input_path).is_file():
        raise ConfigurationError("cannot read input file", file=str(input_path))
    for chain in pipeline.chains:
        chain.plan()  # logs each engine that cannot run here, and why, before any row
    summary, started = Summary(), time.monotonic()
    with _Sink(output_path, errors_path, restart, stdout) as sink:
        rows = iter_rows(input_path)
        total = _count_rows(input_path) if sys.stderr.isatty() else 0
        bar = progress_bar(total, len(sink.done), desc=pipeline.name)
        while wave := list(itertools.islice(rows, concurrency)):
            bar.update(await _run_wave(pipeline, wave, sink, summary))
        bar.close()
    summary.seconds = time.monotonic() - started
    return summary


async def _run_wave(pipeline: Pipeline, wave: list[tuple[int, int, Any]], sink: _Sink,
                    summary: Summary) -> int:
    """Run the rows of ``wave`` not done yet; returns how many it ran."""
    summary.rows += len(wave)
    todo = [(i, line, row) for i, line, row in wave if i not in sink.done]
    summary.skipped += len(wave) - len(todo)
    for index, lineno, row in todo:
        if isinstance(row, InputError):
            summary.failed += 1
            sink.fail(index, lineno, row, None)
    good = [item for item in todo if not isinstance(item[2], InputError)]
    outcomes = await pipeline.arun_batch([row for _, _, row in good])
    for (index, lineno, row), outcome in zip(good, outcomes, strict=True):
        summary.engines.update(outcome.served_by)
        summary.tokens.update({k: v for k, v in outcome.usage.items() if k != "total_tokens"})
        if outcome.error is not None:
            summary.failed += 1
            sink.fail(index, lineno, outcome.error, row)
        else:
            summary.succeeded += 1
            sink.write(index, outcome.output)  # type: ignore[arg-type]
    return len(todo)
