"""Exactly-once JSONL output that survives a crash.

Each output line carries its row's key. On open, the writer reads the lines
already there, drops a torn last line (a crash mid-write), and reports which
keys are done; a rerun skips those rows. Lines are flushed one by one, so a
kill loses at most the row being written.

    with ResumableJsonlWriter("out.jsonl", key_field="row") as out:
        for i, row in enumerate(rows):
            if i not in out.done:
                out.write(i, {"row": i, ...})
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferline.core.types import Conversation, iter_jsonl
from inferline.errors import ConfigurationError, InferlineError

if TYPE_CHECKING:
    from inferline.core.configs import InferenceConfig
    from inferline.engines.base import BaseInferenceEngine

ROW_KEY = "input_index"  # metadata key that ties an output conversation to its input row


class ResumableJsonlWriter:
    def __init__(self, path: str | Path, *, key_of: Any) -> None:
        """``key_of(obj) -> key`` extracts a row key from a parsed output line."""
        self.path = Path(path)
        self.done: set[Any] = set()
        self._key_of = key_of
        self._fh: Any = None

    def __enter__(self) -> ResumableJsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def _recover(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # torn last line from a crash: drop it
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
        for lineno, line in enumerate(data[:cut].splitlines(), 1):
            if line.strip():
                try:
                    self.done.add(self._key_of(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigurationError(f"existing output line is not a result row ({exc})",
                                             file=str(self.path), line=lineno) from exc

    def write(self, key: Any, line: str) -> None:
        """Append one JSON line (without newline) for ``key`` and flush it to the OS."""
        self._fh.write(line + "\n")
        self._fh.flush()
        self.done.add(key)

    def fsync(self) -> None:
        os.fsync(self._fh.fileno())


def _conversation_key(obj: dict[str, Any]) -> int:
    return obj["metadata"][ROW_KEY]


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, done: int, desc: str = "inferring") -> Any:
    """A tqdm bar on stderr when it is a terminal; otherwise one that draws nothing."""
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="row", desc=desc, dynamic_ncols=True)


async def ainfer_files(engine: BaseInferenceEngine, conversations: Sequence[Conversation] | None,
                       config: InferenceConfig | None) -> list[Conversation]:
    """Run ``engine`` over ``config.input_path`` (or ``conversations``), appending to
    ``config.output_path`` as rows complete and skipping rows a previous run finished.

    Rows that fail for good are reported on stderr and do not stop the others; if
    any failed, the first error is raised after every other row is written.
    """
    if config is None or (conversations is None and not config.input_path):
        raise ConfigurationError("no input: pass conversations or set input_path", key="input_path")
    if conversations is None:
        conversations = list(iter_jsonl(config.input_path))  # type: ignore[arg-type]
    if not config.output_path:
        return await engine.ainfer(conversations, config)
    first_error: InferlineError | None = None
    with ResumableJsonlWriter(config.output_path, key_of=_conversation_key) as out:
        todo = [i for i in range(len(conversations)) if i not in out.done]
        tagged = [conversations[i].model_copy(
            update={"metadata": {**conversations[i].metadata, ROW_KEY: i}}) for i in todo]
        bar = progress_bar(len(conversations), len(conversations) - len(todo))
        async for result in engine.aiter_results(tagged, config):
            row = todo[result.index]
            bar.update(1)
            if result.error is not None:
                print(f"row {row}: {result.error}", file=sys.stderr)
                first_error = first_error or result.error
                continue
            assert result.conversation is not None
            out.write(row, result.conversation.to_json())
        bar.close()
    if first_error is not None:
        raise first_error
    return sorted(iter_jsonl(config.output_path), key=lambda c: c.metadata[ROW_KEY])
