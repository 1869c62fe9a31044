"""Exactly-once JSONL output that survives a crash, and the progress bar of file runs
(``inferline.pipelines.runner`` is the one runner that uses both).

Each output line carries its input row's index (``_row``). On open, the writer
reads the lines already there, drops a torn last line (a crash mid-write), and
reports which rows are done; a rerun skips them. Lines are flushed one by one, so a
kill loses at most the row being written.

    >>> import json, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
    >>> with ResumableJsonlWriter(path) as out:
    ...     out.write(json.dumps({"_row": 0, "answer": "Paris"}))
    >>> with ResumableJsonlWriter(path) as out:   # a rerun: row 0 is done
    ...     sorted(out.done)
    [0]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from inferline.errors import ConfigurationError


class ResumableJsonlWriter:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.done: set[Any] = set()  # the ``_row`` of every line already there
        self._fh: Any = None

    def __enter__(self) -> ResumableJsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._fh = open(self.path, "a", encoding="utf-8")  # closed in __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync(self._fh.fileno())  # flushed lines reach the disk before the run reports done
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
                    self.done.add(json.loads(line)["_row"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigurationError(f"existing output line is not a result row ({exc})",
                                             file=str(self.path), line=lineno) from exc

    def write(self, line: str) -> None:
        """Append one JSON line (without newline; it carries its ``_row``) and flush it to the OS.

        ``done`` keeps only the rows found on open: a run moves forward through its
        rows, so a million rows written cost no memory here.
        """
        self._fh.write(line + "\n")
        self._fh.flush()


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, done: int, desc: str = "inferring") -> Any:
    """A tqdm bar on stderr when it is a terminal; otherwise one that draws nothing (without
    importing tqdm: ~50 ms)."""
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="row", desc=desc, dynamic_ncols=True)
