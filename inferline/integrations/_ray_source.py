"""The input of a Ray run: a JSONL file as Ray Data blocks, each row numbered as the local
runner numbers it (``_row``: its index among the non-blank lines; ``line``: its line number).

The driver scans the file (bytes, no parsing) into spans of whole lines; each span with
work left is one read task, which yields blocks of at most ``block_rows`` rows (many waves
each) and leaves out the rows an earlier run wrote. Lines split where Python's text
mode splits them (``\\n``, ``\\r\\n``, ``\\r``), so ``_row`` and ``line`` match
``inferline.pipelines.runner.iter_rows``. Imported only when Ray is installed.

    total, spans = scan("rows.jsonl", done={0, 1}, span_rows=4096)
    ds = ray.data.read_datasource(JsonlRowsDatasource("rows.jsonl", spans, block_rows=4096))
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask


@dataclass(frozen=True, slots=True)
class Span:
    """Whole lines of the input: bytes ``[start, end)``, rows ``index .. index + rows - 1``."""

    start: int
    end: int
    index: int  # _row of its first non-blank line
    lineno: int  # line number of its first line
    rows: int  # non-blank lines in it
    done: frozenset[int]  # its rows already written

    @property
    def todo(self) -> int:
        return self.rows - len(self.done)


def scan(path: str | Path, done: set[Any], span_rows: int) -> tuple[int, list[Span]]:
    """``(rows in the file, the spans that still have rows to run)``."""
    spans: list[Span] = []
    offset = index = 0
    begin = (0, 0, 1)  # offset, index and line number where the open span begins
    with open(path, "rb") as fh:
        for lineno, line in enumerate(_split(fh), 1):
            offset += len(line)
            if _blank(line):
                continue
            index += 1
            if index - begin[1] == span_rows:
                spans.append(_span(begin, offset, index, done))
                begin = (offset, index, lineno + 1)
    if index > begin[1]:
        spans.append(_span(begin, offset, index, done))
    return index, [s for s in spans if s.todo]


def _span(begin: tuple[int, int, int], end: int, stop: int, done: set[Any]) -> Span:
    start, first, lineno = begin
    return Span(start, end, first, lineno, stop - first,
                frozenset(i for i in range(first, stop) if i in done))


def _split(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines with their endings, split at ``\\n``, ``\\r\\n`` and ``\\r`` (as text mode does)."""
    for chunk in chunks:  # a binary file splits at b"\n" only
        if b"\r" in chunk:
            yield from chunk.splitlines(keepends=True)
        else:
            yield chunk


def _blank(line: bytes) -> bool:
    """What the local runner skips: a line that is only (Unicode) whitespace."""
    if not line.strip():
        return True
    if line.isascii():
        return False
    try:
        return not line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def _read(path: str, span: Span, block_rows: int) -> Iterator[pa.Table]:
    """The span's rows not done yet: ``_row``, ``line`` and the raw line, in blocks."""
    with open(path, "rb") as fh:
        fh.seek(span.start)
        data = fh.read(span.end - span.start)
    rows: list[int] = []
    lines: list[int] = []
    texts: list[bytes] = []
    index = span.index
    for lineno, line in enumerate(data.splitlines(keepends=True), span.lineno):
        if _blank(line):
            continue
        if index not in span.done:
            rows.append(index)
            lines.append(lineno)
            texts.append(line)
            if len(rows) == block_rows:
                yield _block(rows, lines, texts)
                rows, lines, texts = [], [], []
        index += 1
    if rows:
        yield _block(rows, lines, texts)


def _block(rows: list[int], lines: list[int], texts: list[bytes]) -> pa.Table:
    return pa.table({"_row": pa.array(rows, pa.int64()), "line": pa.array(lines, pa.int64()),
                     "text": pa.array(texts, pa.binary())})


class JsonlRowsDatasource(Datasource):  # type: ignore[misc]
    """One read task per span (Ray's ``parallelism`` hint is not needed: spans are small)."""

    def __init__(self, path: str, spans: list[Span], block_rows: int) -> None:
        super().__init__()
        self.path, self.spans, self.block_rows = path, spans, block_rows

    def estimate_inmemory_data_size(self) -> int:
        return sum(span.end - span.start for span in self.spans)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [ReadTask(functools.partial(_read, self.path, span, self.block_rows),
                         BlockMetadata(num_rows=span.todo, size_bytes=span.end - span.start,
                                       exec_stats=None, input_files=[self.path]),
                         per_task_row_limit=per_task_row_limit)
                for span in self.spans]
