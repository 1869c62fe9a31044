"""An exact response cache, and the canonical request key it shares with record/replay.

A ``CachedEngine`` holds an engine and offers the same door. Each row's key is the
SHA-256 of the canonical JSON of the whole request (``canonical_request``); a hit is
answered from the store (``cache: "hit"`` in its provenance, zero usage: no engine call,
no tokens), a miss goes to the engine and, if it succeeded, is stored. Errors are never
stored. Off unless settings say so (``engines.<name>.cache``, ``chains.<name>.cache``, a
pipeline step's ``cache:``); ``cache_control(no_read=..., no_write=...)`` narrows it for
one request (the gateway's ``Cache-Control: no-cache`` / ``no-store``).

    engine = CachedEngine(LlamaCppInferenceEngine(...), DiskStore("/tmp/c"), CacheSettings())
    [done] = await engine.agenerate([Conversation.from_prompt("Hi")])   # a miss: asks llama.cpp
    [done] = await engine.agenerate([Conversation.from_prompt("Hi")])   # done.cache == "hit"
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import weakref
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog

from inferline.core.configs import GenerationParams, InferenceConfig, InferenceEngineType
from inferline.core.types import Conversation, Message, ToolCall
from inferline.engines.base import (
    BaseInferenceEngine,
    Completion,
    Generator,
    Outcome,
    StreamChunk,
    Usage,
)
from inferline.errors import EngineUnavailableError, InferlineError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from inferline.settings.model import CacheSettings

log = structlog.get_logger(__name__)

# -- the key --------------------------------------------------------------------------

#: llama.cpp options that change how weights are paged in or what is logged, never the answer
NO_EFFECT_OPTIONS = frozenset({"verbose", "use_mmap", "use_mlock"})
_hashes: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256


def file_sha256(path: Path) -> str:
    """A file's SHA-256, computed once per path, mtime and size in this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _hashes:
        with open(path, "rb") as fh:
            _hashes[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _hashes[key]


def content_sha256(path: Path) -> str:
    """A file's SHA-256, or a folder's over its files' relative names and hashes."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path)}\0{file_sha256(item)}\n".encode())
    return digest.hexdigest()


def model_identity(engine: BaseInferenceEngine) -> dict[str, Any]:
    """What model answers: a local model's content hash (a packaged model's GGUF hash, plus
    the dtype its Hugging Face copy is built in), a hub id as written, or a remote model's
    name and the URL it is asked at."""
    from inferline.engines.models import gguf_path, hf_dtype, packaged
    from inferline.engines.remote import BaseRemoteEngine

    name = engine.model_params.model_name
    if isinstance(engine, BaseRemoteEngine):
        return {"model": name, "url": engine.api_url}
    if not engine.is_local:  # a test double
        return {"model": name}
    if name and Path(name).expanduser().exists():
        return {"sha256": content_sha256(Path(name).expanduser())}
    if name and (spec := packaged(name)) is not None:
        gguf = {"sha256": file_sha256(gguf_path(spec.name))}
        return gguf if engine.engine_type is InferenceEngineType.LLAMACPP else {
            **gguf, "hf_dtype": hf_dtype()}
    return {"hub": name}


def engine_identity(engine: BaseInferenceEngine) -> dict[str, Any]:
    """Everything about ``engine`` that can change an answer; may read (hash) model files.

    In: the engine type, ``model_identity``, every other ``ModelParams`` field (tokenizer,
    chat template, dtype, ...), and the engine's typed ``model_kwargs`` with their defaults
    filled in (so ``{}`` and ``{n_batch: 512}`` are one key), less ``NO_EFFECT_OPTIONS``.
    Out: the engine's name (two names for one configuration share answers), ``self_check``,
    and every ``RemoteParams`` field but the URL: the API key's variable (who pays, not what
    is answered), retries, timeouts, ``num_workers``, politeness and rate limits (how fast,
    not what). Nor does it see the backend library's version or the CPU it runs on: clear
    the cache after upgrading a backend.
    """
    from inferline.engines.local import LocalInferenceEngine

    kwargs = (engine.options.model_dump(mode="json", exclude=NO_EFFECT_OPTIONS)
              if isinstance(engine, LocalInferenceEngine) else engine.model_params.model_kwargs)
    return {"type": engine.engine_type.value, "model": model_identity(engine),
            "model_params": engine.model_params.model_dump(
                mode="json", exclude={"model_name", "model_kwargs"}),
            "options": kwargs}


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _message(message: Message) -> dict[str, Any]:
    """A message as ``model_dump(mode="json")`` gives it, without pydantic for plain text."""
    content = message.content
    out = {"role": message.role.value, "id": message.id,
           "content": content if isinstance(content, str) else [
               item.model_dump(mode="json") for item in content]}
    if message.tool_calls or message.tool_call_id:  # tool turns: the calls and their results
        out["tool_calls"] = [c.model_dump(mode="json") for c in message.tool_calls or ()]
        out["tool_call_id"] = message.tool_call_id
    return out


def canonical_request(identity: dict[str, Any], params: GenerationParams,
                      conversation: Conversation) -> dict[str, Any]:
    """The whole request as plain data: engine identity, every generation parameter (the
    engine's defaults merged with the call's), and the messages in full (roles, text,
    images, ids; an image given by URL or path counts by that, not by its bytes). A
    conversation's id and metadata never reach an engine, so are left out."""
    return {"engine": identity, "generation": params.model_dump(mode="json", by_alias=True),
            "messages": [_message(m) for m in conversation.messages]}


class RequestKeys:
    """The keys of one engine's requests: ``sha256(canonical JSON of canonical_request)``.

    The engine part is computed once (in a thread: it may hash a model file), the
    generation part once per call; per row only the messages are serialized.

        keys = RequestKeys(engine)
        await keys.akeys(conversations, config)   # one hex key per conversation
    """

    def __init__(self, engine: BaseInferenceEngine) -> None:
        self.engine = engine
        self._identity: dict[str, Any] | None = None

    async def aidentity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = await asyncio.to_thread(engine_identity, self.engine)
        return self._identity

    async def arequests(self, conversations: Sequence[Conversation],
                        config: InferenceConfig | None) -> list[dict[str, Any]]:
        """Each row's ``canonical_request``; the engine's own error if it refuses the params."""
        identity, params = await self.aidentity(), self.engine._generation(config)
        return [canonical_request(identity, params, c) for c in conversations]

    async def akeys(self, conversations: Sequence[Conversation],
                    config: InferenceConfig | None) -> list[str]:
        """Each row's key; raises the engine's ``InferlineError`` if it refuses the params."""
        identity, params = await self.aidentity(), self.engine._generation(config)
        head = hashlib.sha256(b'{"engine":' + _json(identity) + b',"generation":' + _json(
            params.model_dump(mode="json", by_alias=True)) + b',"messages":')
        keys = []
        for conversation in conversations:
            digest = head.copy()
            digest.update(_json([_message(m) for m in conversation.messages]) + b"}")
            keys.append(digest.hexdigest())
        return keys


def request_key(request: dict[str, Any]) -> str:
    """The key of a ``canonical_request`` (what ``RequestKeys.akeys`` computes row by row)."""
    return hashlib.sha256(_json(request)).hexdigest()


# -- per-request narrowing --------------------------------------------------------------


#: (no_read, no_write) for the current task: Cache-Control ``no-cache``, ``no-store``
_control: ContextVar[tuple[bool, bool]] = ContextVar("inferline_cache_control",
                                                     default=(False, False))


@contextlib.contextmanager
def cache_control(*, no_read: bool = False, no_write: bool = False) -> Iterator[None]:
    """Inside, caches neither read (``no_read``) nor write (``no_write``); for this task only.

        with cache_control(no_read="no-cache" in header):
            outcomes = await chain.agenerate(rows)
    """
    outer_read, outer_write = _control.get()
    token = _control.set((outer_read or no_read, outer_write or no_write))
    try:
        yield
    finally:
        _control.reset(token)


def apply_cache_control(header: str | None) -> None:
    """Narrow caches for the rest of the current task by an HTTP ``Cache-Control`` header:
    ``no-cache`` reads no cache, ``no-store`` writes none (a gateway request is one task)."""
    directives = {d.strip().split("=")[0] for d in (header or "").lower().split(",")}
    outer_read, outer_write = _control.get()
    _control.set((outer_read or "no-cache" in directives, outer_write or "no-store" in directives))


def cache_layers(*layers: CacheSettings | None) -> CacheSettings | None:
    """Later layers override the fields they set: engine, then chain, then pipeline step."""
    out: CacheSettings | None = None
    for layer in layers:
        if layer is not None:
            out = layer if out is None else out.model_copy(
                update={k: getattr(layer, k) for k in layer.model_fields_set})
    return out


# -- stores -----------------------------------------------------------------------------


class CacheStore(Protocol):
    async def aget_many(self, keys: list[str]) -> list[bytes | None]: ...
    async def aset_many(self, items: list[tuple[str, bytes]], ttl_s: float | None) -> None: ...
    async def adelete_many(self, keys: list[str]) -> None: ...
    async def aclose(self) -> None: ...


class DiskStore:
    """Entries in a ``diskcache.Cache`` (SQLite) folder; shared by processes on one machine."""

    def __init__(self, path: str | Path) -> None:
        import diskcache

        self.cache = diskcache.Cache(str(Path(path).expanduser()))

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        get = self.cache.get
        return [get(k) for k in keys]

    async def aget_many(self, keys: list[str]) -> list[bytes | None]:
        # a wave's reads (tens of microseconds each) cost less than a hand-off to a thread
        # (bench/cache.py: 34 against 77 us a row); only a huge batch leaves the event loop
        return self.get_many(keys) if len(keys) <= 256 else await asyncio.to_thread(
            self.get_many, keys)

    def set_many(self, items: list[tuple[str, bytes]], ttl_s: float | None) -> None:
        with self.cache.transact():
            for key, value in items:
                self.cache.set(key, value, expire=ttl_s)

    async def aset_many(self, items: list[tuple[str, bytes]], ttl_s: float | None) -> None:
        if items:
            await asyncio.to_thread(self.set_many, items, ttl_s)

    async def adelete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.cache.delete(key)

    async def aclose(self) -> None:
        self.cache.close()


class RedisStore:
    """Entries in Redis (``redis.asyncio``), shared by every process that reaches it. A
    client is bound to an event loop, so each loop gets its own. An unreachable server is
    logged and counts as a miss (the engine answers)."""

    def __init__(self, url: str, prefix: str = "inferline:cache:") -> None:
        self.url, self.prefix = url, prefix
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = (
            weakref.WeakKeyDictionary())

    def _client(self) -> Redis:
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            try:
                from redis.asyncio import Redis
            except ImportError as exc:
                raise EngineUnavailableError("the redis cache backend needs the redis "
                                             "package: pip install 'inferline[redis]'") from exc
            self._clients[loop] = Redis.from_url(self.url)
        return self._clients[loop]

    async def aget_many(self, keys: list[str]) -> list[bytes | None]:
        from redis.exceptions import RedisError

        try:
            values: list[Any] = await self._client().mget([self.prefix + k for k in keys])
        except (RedisError, OSError) as exc:
            log.warning("cache_unavailable", backend="redis", error=str(exc))
            return [None] * len(keys)
        return values

    async def aset_many(self, items: list[tuple[str, bytes]], ttl_s: float | None) -> None:
        from redis.exceptions import RedisError

        if not items:
            return
        ttl_ms = int(ttl_s * 1000) if ttl_s else None
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(self.prefix + key, value, px=ttl_ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("cache_unavailable", backend="redis", error=str(exc))

    async def adelete_many(self, keys: list[str]) -> None:
        if keys:
            await self._client().delete(*[self.prefix + k for k in keys])

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def open_store(settings: CacheSettings) -> CacheStore:
    """The store ``settings`` name (nothing is opened until first use for Redis)."""
    if settings.backend == "redis":
        return RedisStore(settings.url, settings.prefix)
    from inferline.engines.models import data_dir

    return DiskStore(settings.path or data_dir() / "responses")


def store_id(settings: CacheSettings) -> tuple[str, str]:
    """Settings that name one store share it."""
    if settings.backend == "redis":
        return ("redis", settings.url + " " + settings.prefix)
    return ("disk", settings.path or "")


# -- the wrappers ---------------------------------------------------------------------------


class EngineWrapper(Generator):
    """A wrapper around an engine (or another wrapper): its door, lifecycle and checks."""

    def __init__(self, inner: Engine) -> None:
        self.inner, self.name = inner, inner.name

    @property
    def engine(self) -> BaseInferenceEngine:
        """The engine at the bottom of the wrappers."""
        inner = self.inner
        return inner.engine if isinstance(inner, EngineWrapper) else inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def preflight(self) -> None:
        self.inner.preflight()

    async def aload(self) -> None:
        await self.inner.aload()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def get_supported_params(self) -> set[str]:
        return self.inner.get_supported_params()

    async def acheck(self) -> str:
        return await self.inner.acheck()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


#: what the catalog hands out: an engine, or an engine behind a cache and/or record/replay
Engine = BaseInferenceEngine | EngineWrapper


def entry(done: Completion) -> dict[str, Any]:
    """What is stored of an answer (a cassette adds its provenance)."""
    return {"text": done.text, "finish_reason": done.finish_reason,
            "tool_calls": [c.model_dump(mode="json") for c in done.tool_calls]}


def from_entry(raw: bytes, name: str) -> Completion:
    data = orjson.loads(raw)
    return Completion(data["text"], data["finish_reason"], Usage(), served_by=name, cache="hit",
                      tool_calls=[ToolCall(**c) for c in data.get("tool_calls", ())])


class CachedEngine(EngineWrapper):
    """``inner`` behind an exact response cache; see the module docstring."""

    def __init__(self, inner: Engine, store: CacheStore, settings: CacheSettings) -> None:
        super().__init__(inner)
        self.store, self.settings = store, settings
        self.keys = RequestKeys(self.engine)

    def _modes(self) -> tuple[bool, bool]:
        """(read, write) for this request: the settings' mode, narrowed by ``cache_control``."""
        mode, (no_read, no_write) = self.settings.mode, _control.get()
        return (mode in ("read_write", "read_only") and not no_read,
                mode in ("read_write", "write_only") and not no_write)

    async def aload(self) -> None:
        """Nothing while answers may come from the cache: the first miss loads the engine
        (a rerun that only hits never loads a model). Its preflight still runs first."""
        if not self._modes()[0]:
            await self.inner.aload()

    async def agenerate(self, conversations: Sequence[Conversation],
                        inference_config: InferenceConfig | None = None) -> list[Outcome]:
        read, write = self._modes()
        try:
            keys = await self.keys.akeys(conversations, inference_config) if read or write else []
        except InferlineError:  # the engine refuses these params: let it say so, per row
            keys = []
        if not keys:
            return await self.inner.agenerate(conversations, inference_config)
        hits = await self.store.aget_many(keys) if read else [None] * len(keys)
        todo = [i for i, hit in enumerate(hits) if hit is None]
        fresh = await self.inner.agenerate([conversations[i] for i in todo],
                                           inference_config) if todo else []
        if write:
            done = [(keys[i], orjson.dumps(entry(o))) for i, o in zip(todo, fresh, strict=True)
                    if isinstance(o, Completion)]
            await self.store.aset_many(done, self.settings.ttl_s)
        answered = iter(fresh)
        return [from_entry(h, self.name) if h is not None else next(answered) for h in hits]

    async def astream(self, conversation: Conversation,
                      inference_config: InferenceConfig | None = None,
                      ) -> AsyncGenerator[StreamChunk, None]:
        read, write = self._modes()
        key = (await self.keys.akeys([conversation], inference_config))[0] if read or write else ""
        hit = (await self.store.aget_many([key]))[0] if read else None
        if hit is not None:
            yield from_entry(hit, self.name).as_chunk()
            return
        text: list[str] = []
        async for chunk in self.inner.astream(conversation, inference_config):
            text.append(chunk.text)
            write = write and not chunk.tool_calls  # streamed tool calls are not kept
            if chunk.finish_reason is not None and write:
                await self.store.aset_many(
                    [(key, orjson.dumps(entry(Completion("".join(text), chunk.finish_reason))))],
                    self.settings.ttl_s)
            yield chunk

    async def aforget(self, conversations: Sequence[Conversation],
                      inference_config: InferenceConfig | None = None) -> None:
        """Drop these requests' entries (an answer found invalid after it was stored)."""
        await self.store.adelete_many(await self.keys.akeys(conversations, inference_config))

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(),
                "cache": f"{self.settings.backend} ({self.settings.mode})"}
