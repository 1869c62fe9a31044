"""State that gateway replicas share through Redis: circuit breakers, rate limits and
the day's spend per API key (``server/budgets.py``).

    state = shared_state(settings.state)     # None for backend: memory (each process alone)
    chains = ChainCatalog(settings.chains, engines, store=state)   # breakers shared
    engines = EngineCatalog(settings.engines, limits=state)        # rate limits shared

Every breaker and limiter keeps working on local state while Redis is unreachable: the
first failed call logs ``shared_state_unreachable`` once, calls skip Redis for
``RETRY_S`` seconds, and ``status()`` (shown on ``/ready``) says ``degraded`` until a
call succeeds again. Times come from Redis' own clock, so replicas on hosts whose
clocks differ still agree.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import structlog

from inferline.engines._pacing import RateLimiter
from inferline.errors import ConfigurationError
from inferline.pipelines.breaker import Circuit
from inferline.settings.model import StateSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

log = structlog.get_logger(__name__)

T = TypeVar("T")
TIMEOUT_S = 0.5  # connect and reply timeout of one Redis call
RETRY_S = 2.0  # after a failed call, local state only for this long
KEEP_MS = 24 * 3600 * 1000  # a breaker's record outlives its last change this long
SPEND_KEEP_MS = 2 * KEEP_MS  # a day's spend counter outlives its UTC day

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
_NOW_US = "local t = redis.call('TIME') local now = t[1] * 1000000 + t[2] "
# KEYS: circuit, trial; ARGV: cooldown_ms, trial_ttl_ms -> {failures, open_for_ms|-1, admitted}
ADMIT = _NOW_MS + """
local h = redis.call('HMGET', KEYS[1], 'failures', 'opened')
local failures, opened = tonumber(h[1] or '0'), tonumber(h[2] or '0')
if opened == 0 then return {failures, -1, 1} end
if now - opened < tonumber(ARGV[1]) then return {failures, now - opened, 0} end
local won = redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2])
return {failures, now - opened, won and 1 or 0}
"""
# KEYS: circuit, trial; ARGV: threshold, cooldown_ms, keep_ms -> {failures, open_for_ms|-1}
FAIL = _NOW_MS + """
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened') or '0')
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local trial = opened > 0 and now - opened >= tonumber(ARGV[2])
if trial or failures >= tonumber(ARGV[1]) then
  opened = now
  redis.call('HSET', KEYS[1], 'opened', string.format('%d', now), 'cooldown', ARGV[2])
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if opened == 0 then return {failures, -1} end
return {failures, now - opened}
"""
# KEYS: circuits -> per key {failures, open_for_ms|-1, cooldown_ms}
READ = _NOW_MS + """
local out = {}
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'failures', 'opened', 'cooldown')
  local opened = tonumber(h[2] or '0')
  out[i] = {tonumber(h[1] or '0'), opened == 0 and -1 or now - opened, tonumber(h[3] or '0')}
end
return out
"""
# KEYS: next slot; ARGV: interval_us -> microseconds to wait for the slot reserved
SPACE = _NOW_US + """
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local after = slot + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', after), 'PX', math.ceil((after - now) / 1000) + 1000)
return slot - now
"""
# KEYS: bucket; ARGV: tokens_per_minute, take, give_back -> microseconds to wait (0: taken)
BUCKET = _NOW_US + """
local tpm = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(h[1] or ARGV[1]), tonumber(h[2] or now)
tokens = math.min(tpm, tokens + (now - stamp) * tpm / 60000000 + tonumber(ARGV[3]))
local take, wait = tonumber(ARGV[2]), 0
if tokens >= take then tokens = tokens - take else wait = (take - tokens) * 60000000 / tpm end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], 120000)
return math.ceil(wait)
"""
# KEYS: counter; ARGV: amount, keep_ms -> the new total (as a string)
SPEND = """
local total = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return total
"""
SCRIPTS = (ADMIT, FAIL, READ, SPACE, BUCKET, SPEND)


def shared_state(settings: StateSettings) -> RedisState | None:
    """The store replicas share, or None for ``backend: memory`` (each process alone)."""
    if settings.backend == "memory":
        return None
    assert settings.url is not None  # the settings model requires it for redis
    if importlib.util.find_spec("redis") is None:
        raise ConfigurationError("state backend redis needs the redis package: "
                                 "pip install 'inferline[redis]'", key="state.backend")
    return RedisState(settings.url, prefix=settings.prefix)


class RedisState:
    """Breakers (a ``BreakerStore``) and rate limiters kept in one Redis."""

    def __init__(self, url: str, *, prefix: str = "inferline:") -> None:
        self.url, self.prefix = url, prefix
        parts = urlsplit(url)
        self.where = f"{parts.hostname}:{parts.port or 6379}{parts.path}"  # never a password
        self.error: str | None = None  # why Redis is unreachable, while it is
        self._retry_at = 0.0
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Connection] = (
            weakref.WeakKeyDictionary())

    def __repr__(self) -> str:
        return f"RedisState({self.where!r})"

    def status(self) -> dict[str, Any]:
        """For ``/ready``: ok, or degraded (serving on local state) and why."""
        if self.error is None:
            return {"backend": "redis", "status": "ok"}
        return {"backend": "redis", "status": "degraded",
                "reason": f"Redis at {self.where} unreachable ({self.error}): local state only"}

    # -- BreakerStore ------------------------------------------------------------------

    async def admit(self, key: str, cooldown_s: float, trial_ttl_s: float) -> Circuit | None:
        keys = [self._circuit(key), self._circuit(key) + ":trial"]
        reply = await self._run(lambda r: r.scripts[ADMIT](keys, [_ms(cooldown_s),
                                                                  _ms(trial_ttl_s)]))
        if reply is None:
            return None
        failures, open_ms, admitted = reply
        return Circuit(int(failures), _seconds(open_ms), admitted=bool(admitted))

    async def record(self, key: str, ok: bool, failure_threshold: int,
                     cooldown_s: float) -> Circuit | None:
        keys = [self._circuit(key), self._circuit(key) + ":trial"]
        if ok:
            done = await self._run(lambda r: r.client.delete(*keys))
            return None if done is None else Circuit(0, None)
        reply = await self._run(lambda r: r.scripts[FAIL](keys, [failure_threshold,
                                                                 _ms(cooldown_s), KEEP_MS]))
        return None if reply is None else Circuit(int(reply[0]), _seconds(reply[1]))

    async def read(self, keys: list[str]) -> dict[str, Circuit] | None:
        reply = await self._run(lambda r: r.scripts[READ]([self._circuit(k) for k in keys]))
        if reply is None:
            return None
        return {key: Circuit(int(f), _seconds(o), cooldown_s=int(c) / 1000 or None)
                for key, (f, o, c) in zip(keys, reply, strict=True)}

    # -- rate limits ---------------------------------------------------------------------

    def limiter(self, name: str, requests_per_minute: float | None,
                tokens_per_minute: float | None) -> RateLimiter:
        """Engine ``name``'s request and token budget, shared by every replica."""
        return SharedRateLimiter(self, name, requests_per_minute=requests_per_minute,
                                 tokens_per_minute=tokens_per_minute)

    async def next_slot(self, name: str, interval_s: float) -> float | None:
        """Reserve the next request slot of ``name``: seconds until it comes."""
        waited = await self._run(lambda r: r.scripts[SPACE]([self._key("rpm", name)],
                                                            [round(interval_s * 1e6)]))
        return None if waited is None else int(waited) / 1e6

    async def take_tokens(self, name: str, tokens_per_minute: float, take: float,
                          give_back: float = 0.0) -> float | None:
        """Take ``take`` tokens from ``name``'s bucket: 0, or seconds until there are enough."""
        waited = await self._run(lambda r: r.scripts[BUCKET](
            [self._key("tpm", name)], [tokens_per_minute, take, give_back]))
        return None if waited is None else int(waited) / 1e6

    # -- spend per API key per day (a ``server.budgets.SpendStore``) ------------------------

    async def add_spend(self, day: str, who: str, amount: float) -> float | None:
        """Add ``amount`` USD to ``who``'s spend on ``day``: the new total."""
        key = self._key("spend", f"{day}:{who}")
        total = await self._run(lambda r: r.scripts[SPEND]([key], [f"{amount:.17g}",
                                                                    SPEND_KEEP_MS]))
        return None if total is None else float(total)

    async def spent(self, day: str, who: str) -> float | None:
        """``who``'s spend on ``day`` across every replica."""
        async def read(r: _Connection) -> float:
            value = await r.client.get(self._key("spend", f"{day}:{who}"))
            return float(value) if value is not None else 0.0

        return await self._run(read)

    # -- the one way to Redis ------------------------------------------------------------

    async def _run(self, call: Callable[[_Connection], Awaitable[T]]) -> T | None:
        """``call``'s reply, or None while Redis is unreachable (then logged once)."""
        from redis import exceptions

        if self.error is not None and time.monotonic() < self._retry_at:
            return None
        try:
            reply = await call(self._client())
        except (exceptions.ConnectionError, exceptions.TimeoutError, OSError, TimeoutError) as exc:
            self._retry_at = time.monotonic() + RETRY_S
            if self.error is None:
                self.error = str(exc) or type(exc).__name__
                log.warning("shared_state_unreachable", backend="redis", at=self.where,
                            error=self.error, fallback="local state")
            return None
        if self.error is not None:
            log.info("shared_state_restored", backend="redis", at=self.where)
            self.error = None
        return reply

    def _client(self) -> _Connection:
        """This loop's client (a client's connections belong to the loop that opened them)."""
        loop = asyncio.get_running_loop()
        conn = self._clients.get(loop)
        if conn is None:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = Redis.from_url(self.url, socket_connect_timeout=TIMEOUT_S,
                                    socket_timeout=TIMEOUT_S, retry=Retry(NoBackoff(), 0))
            scripts = {text: client.register_script(text) for text in SCRIPTS}
            conn = self._clients[loop] = _Connection(client, scripts)
        return conn

    async def aclose(self) -> None:
        """Close this loop's client (others went with their loops)."""
        conn = self._clients.pop(asyncio.get_running_loop(), None)
        if conn is not None:
            await conn.client.aclose()

    def _circuit(self, engine: str) -> str:
        return self._key("breaker", engine)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"


@dataclass
class _Connection:
    """One loop's client, and every script registered with it (sent by SHA after the first)."""

    client: Redis
    scripts: dict[str, AsyncScript]


class SharedRateLimiter(RateLimiter):
    """``RateLimiter``'s spacing and token bucket, kept in Redis for every replica; its
    local self while Redis is unreachable."""

    def __init__(self, state: RedisState, name: str, *, requests_per_minute: float | None,
                 tokens_per_minute: float | None) -> None:
        super().__init__(requests_per_minute=requests_per_minute,
                         tokens_per_minute=tokens_per_minute)
        self.state, self.name = state, name
        self._queue = asyncio.Lock()  # FIFO among this process's callers

    async def acquire(self, estimated_tokens: int = 0) -> None:
        if self._interval:
            wait = await self.state.next_slot(self.name, self._interval)
            if wait is None:
                return await super().acquire(estimated_tokens)
            await asyncio.sleep(wait)
        if self._tpm:
            amount = min(float(estimated_tokens), self._tpm)
            async with self._queue:
                while (wait := await self.state.take_tokens(self.name, self._tpm, amount)) != 0:
                    if wait is None:
                        return await self._take_tokens(amount)
                    await asyncio.sleep(wait)

    def settle(self, estimated_tokens: int, used_tokens: int) -> None:
        if self._tpm and estimated_tokens != used_tokens:
            task = asyncio.get_running_loop().create_task(self.state.take_tokens(
                self.name, self._tpm, 0, give_back=estimated_tokens - used_tokens))
            _SETTLING.add(task)
            task.add_done_callback(_SETTLING.discard)
        super().settle(estimated_tokens, used_tokens)


_SETTLING: set[asyncio.Task[float | None]] = set()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _seconds(ms: Any) -> float | None:
    return None if int(ms) < 0 else int(ms) / 1000
