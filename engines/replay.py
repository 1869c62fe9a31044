"""Record every engine exchange into a cassette; replay a run from it with no engine.

A ``ReplayEngine`` holds an engine and offers the same door. Recording, each answered
request is appended to a JSONL cassette (one line: key, engine, the canonical request,
the completion with its provenance) and flushed to disk per batch. Replaying, answers
come from the cassette and the engine is never loaded (``preflight``/``aload`` do not
reach it); a request that was never recorded fails with ``CassetteMissError``, which
names the nearest recorded request and the fields that differ. The key is the response
cache's (``engines/cache.py``), so everything that can change an answer is in it.

    settings: {replay: record, replay_cassette: run.cassette.jsonl}   # or INFERLINE_REPLAY=record
    engine = ReplayEngine(llama, Cassette("run.cassette.jsonl"), "replay")
    [done] = await engine.agenerate([conv])         # the recorded answer, provenance and all

Only answers are recorded, not errors: a row that failed while recording fails on
replay with ``CassetteMissError``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import orjson

from inferline.core.configs import InferenceConfig
from inferline.core.types import Conversation, ToolCall
from inferline.engines.base import Completion, Outcome, StreamChunk, Usage
from inferline.engines.cache import Engine, EngineWrapper, RequestKeys, entry, request_key
from inferline.errors import (
    Attempt,
    EngineUnavailableError,
    InferlineError,
    UnsupportedRequestError,
)


class CassetteMissError(UnsupportedRequestError):
    """A replayed engine was asked something the cassette does not hold (a request error:
    a chain tries its next engine, which may have recorded it)."""


class Cassette:
    """A JSONL file of recorded exchanges, appended to while recording, read once to replay."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] | None = None

    def append(self, lines: list[dict[str, Any]]) -> None:
        """Append ``lines`` and fsync: a run killed later keeps what it recorded."""
        if not lines:
            return
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())

    def entries(self) -> dict[str, dict[str, Any]]:
        """Key -> recorded line (the last one recorded for a key), read once."""
        with self._lock:
            if self._entries is None:
                if not self.path.is_file():
                    raise EngineUnavailableError(f"no cassette at {self.path} to replay "
                                                 "(record one: INFERLINE_REPLAY=record)")
                with open(self.path, "rb") as fh:
                    self._entries = {e["key"]: e for e in map(orjson.loads, fh) if e}
            return self._entries

    def miss(self, engine: str, request: dict[str, Any]) -> CassetteMissError:
        """The error for an unrecorded ``request``: the nearest recorded one and what differs."""
        mine = flatten(request)
        recorded = [e for e in self.entries().values() if e["engine"] == engine] or list(
            self.entries().values())
        best, diff = None, []
        for candidate in recorded:
            theirs = flatten(candidate["request"])
            fields = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            if best is None or len(fields) < len(diff):
                best, diff = candidate, fields
        if best is None:
            return CassetteMissError(f"request not in cassette {self.path} (it is empty)",
                                     engine=engine)
        shown = "; ".join(f"{k}: recorded {_short(flatten(best['request']).get(k))}, "
                          f"asked {_short(mine.get(k))}" for k in diff[:3])
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        return CassetteMissError(
            f"request not in cassette {self.path}; nearest recorded request "
            f"{best['key'][:12]} (engine {best['engine']}) differs in {len(diff)} field(s): "
            f"{shown}{more}", engine=engine)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """The leaves of ``value`` by dotted path: the fields a miss message can name.

    >>> flatten({"generation": {"stop_strings": ["a"]}, "messages": []})
    {'generation.stop_strings.0': 'a', 'messages': []}
    """
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out if out else {prefix: value}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _line(engine: str, request: dict[str, Any], done: Completion) -> dict[str, Any]:
    return {"key": request_key(request), "engine": engine, "request": request, "completion": {
        **entry(done), "usage": [done.usage.prompt_tokens, done.usage.completion_tokens],
        "attempts": [[a.engine, a.error, a.message, a.latency_s] for a in done.attempts],
        "cache": done.cache}}


def _completion(line: dict[str, Any], name: str) -> Completion:
    c = line["completion"]
    return Completion(c["text"], c["finish_reason"], Usage(*c["usage"]), served_by=name,
                      attempts=[Attempt(*a) for a in c["attempts"]], cache=c["cache"],
                      tool_calls=[ToolCall(**t) for t in c.get("tool_calls", ())])


class ReplayEngine(EngineWrapper):
    """``inner`` recorded into, or replayed from, ``cassette``; see the module docstring."""

    def __init__(self, inner: Engine, cassette: Cassette, mode: str) -> None:
        """``mode``: "replay" serves from ``cassette``; anything else records into it."""
        super().__init__(inner)
        self.cassette, self.mode = cassette, mode
        self.keys = RequestKeys(self.engine)

    def preflight(self) -> None:
        if self.mode == "record":
            self.inner.preflight()
        elif self.name not in {e["engine"] for e in self.cassette.entries().values()}:
            raise EngineUnavailableError(f"nothing recorded for it in {self.cassette.path}",
                                         engine=self.name)

    async def aload(self) -> None:
        if self.mode == "record":
            await self.inner.aload()
        else:
            await asyncio.to_thread(self.preflight)

    async def agenerate(self, conversations: Sequence[Conversation],
                        inference_config: InferenceConfig | None = None) -> list[Outcome]:
        if self.mode == "replay":
            return await self._replay(conversations, inference_config)
        start = time.monotonic()
        outcomes = await self.inner.agenerate(conversations, inference_config)
        latency = time.monotonic() - start
        try:
            requests = await self.keys.arequests(conversations, inference_config)
        except InferlineError:  # the engine refused the params: nothing was answered
            return outcomes
        lines = []
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, Completion):
                # the latency the chain would measure, fixed now so a replay repeats it
                outcome.attempts = outcome.attempts or [Attempt(self.name, None, None, latency)]
                lines.append(_line(self.name, request, outcome))
        await asyncio.to_thread(self.cassette.append, lines)
        return outcomes

    async def _replay(self, conversations: Sequence[Conversation],
                      config: InferenceConfig | None) -> list[Outcome]:
        try:
            requests = await self.keys.arequests(conversations, config)
            entries = await asyncio.to_thread(self.cassette.entries)
        except InferlineError as exc:
            return [exc] * len(conversations)
        outcomes: list[Outcome] = []
        for request in requests:
            line = entries.get(request_key(request))
            outcomes.append(_completion(line, self.name) if line is not None
                            else self.cassette.miss(self.name, request))
        return outcomes

    async def astream(self, conversation: Conversation,
                      inference_config: InferenceConfig | None = None,
                      ) -> AsyncGenerator[StreamChunk, None]:
        """Replaying, the recorded answer as one chunk; recording, the engine's chunks."""
        if self.mode == "replay":
            [done] = await self._replay([conversation], inference_config)
            if not isinstance(done, Completion):
                raise done
            yield done.as_chunk(list(done.attempts))
            return
        [request] = await self.keys.arequests([conversation], inference_config)
        text: list[str] = []
        calls = False  # streamed tool calls are not recorded (a replay of them misses, loudly)
        async for chunk in self.inner.astream(conversation, inference_config):
            text.append(chunk.text)
            calls = calls or bool(chunk.tool_calls)
            if chunk.finish_reason is not None and not calls:
                done = Completion("".join(text), chunk.finish_reason, chunk.usage or Usage(),
                                  attempts=list(chunk.attempts or []))
                await asyncio.to_thread(self.cassette.append, [_line(self.name, request, done)])
            yield chunk

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "replay": f"{self.mode} {self.cassette.path}"}
