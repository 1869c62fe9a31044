"""Spend caps per API key per UTC day (settings: ``server.budgets``).

    budgets = Budgets(settings.server.budgets, keys, store=shared_state(settings.state))
    app.middlewares.append(budget_middleware(budgets))
    spend(request, "openai", 0.0012)     # a handler, once it has served: what it cost

A request on an inference route is refused with 429 (``budget_exceeded``, in the shape of
the API asked) once its key has spent its cap today; what a served request cost is
charged to its key when it ends. Requests in flight when the cap is reached still finish
and count, so a day's spend can pass the cap by what they cost. Spend is counted in memory
(each process alone) or, with ``state: {backend: redis}``, in Redis (every replica; local
counts while Redis is unreachable). A key is known by a short hash (``key_id``), never by
its value; without keys the whole server has one budget.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Mapping
from typing import Protocol

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from inferline.core.cost import usd
from inferline.server.auth import ApiKeys
from inferline.server.context import LOG_FIELDS
from inferline.server.errors import ApiError
from inferline.server.gateway import GATEWAY
from inferline.server.limits import LIMITED_PREFIXES
from inferline.settings.model import BudgetSettings

log = structlog.get_logger(__name__)

COST = web.RequestKey("cost_usd", float)  # what serving the request cost, in USD
ANONYMOUS = "anonymous"  # the one budget of a server without keys


class SpendStore(Protocol):
    """Day totals shared by replicas (``inferline.server.state.RedisState``); None while
    the store is unreachable."""

    async def add_spend(self, day: str, who: str, amount: float) -> float | None: ...
    async def spent(self, day: str, who: str) -> float | None: ...


def key_id(key: str) -> str:
    """A short, stable name for an API key that says nothing about its value."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def _to_midnight() -> int:
    """Seconds until the next UTC day, when budgets start again."""
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    return max(1, int((midnight - now).total_seconds()))


class Budgets:
    """Who has spent what today, and who may spend more."""

    def __init__(self, settings: BudgetSettings, keys: ApiKeys, *,
                 store: SpendStore | None = None) -> None:
        """``keys``: the keys the server accepts (none: everyone shares one budget)."""
        self.settings, self.keys, self.store = settings, keys, store
        self._caps = {key_id(os.environ[name]): cap for name, cap in settings.keys.items()
                      if os.environ.get(name)}
        self._day = ""
        self._local: dict[str, float] = {}  # this process's counts, for ``_day``

    def __bool__(self) -> bool:
        return self.settings.per_key_per_day is not None or bool(self._caps)

    def who(self, headers: Mapping[str, str]) -> str:
        """The caller's budget: the ``key_id`` of the key it was let in with (``Bearer``,
        else ``x-api-key``), so a made-up key in the other header buys no fresh budget."""
        if not self.keys:
            return ANONYMOUS
        authorization = headers.get("Authorization")
        if self.keys.accepts(authorization):
            return key_id((authorization or "").partition(" ")[2].strip())
        return key_id((headers.get("x-api-key") or "").strip())

    def cap(self, who: str) -> float | None:
        return self._caps.get(who, self.settings.per_key_per_day)

    async def spent(self, who: str) -> float:
        """USD ``who`` has spent today (every replica's, with a shared store)."""
        day = today()
        shared = await self.store.spent(day, who) if self.store is not None else None
        return shared if shared is not None else self._counts(day).get(who, 0.0)

    async def check(self, who: str) -> None:
        """``ApiError(429)`` if ``who`` has spent its cap today."""
        cap = self.cap(who)
        if cap is None or (spent := await self.spent(who)) < cap:
            return
        log.warning("budget_exceeded", key=who, spent_usd=spent, cap_usd=cap, day=today())
        whose = "this server" if who == ANONYMOUS else f"API key {who} (a hash of the key)"
        raise ApiError(429, f"daily budget spent: {whose} has spent {usd(spent)} of its "
                       f"{usd(cap)} for {today()} (UTC); it starts again at 00:00 UTC",
                       code="budget_exceeded",
                       headers={"Retry-After": str(_to_midnight())})

    async def charge(self, who: str, amount: float) -> None:
        """Add ``amount`` USD to ``who``'s spend today."""
        if not amount or self.cap(who) is None:
            return
        counts = self._counts(day := today())
        counts[who] = counts.get(who, 0.0) + amount
        if self.store is not None:
            await self.store.add_spend(day, who, amount)

    def _counts(self, day: str) -> dict[str, float]:
        if day != self._day:  # a new UTC day: yesterday's counts are done with
            self._day, self._local = day, {}
        return self._local


def spend(request: web.Request, engine: str, amount: float) -> None:
    """Count what serving ``request`` cost: ``inferline_cost_total{engine}``, the access
    log's ``cost``, and (when the request ends) its key's budget."""
    request.app[GATEWAY].metrics.observe_cost(engine, amount)
    request[COST] = request.get(COST, 0.0) + amount
    request[LOG_FIELDS]["cost"] = request[COST]


def budget_middleware(budgets: Budgets) -> Middleware:
    @web.middleware
    async def budget(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not budgets or not request.path.startswith(LIMITED_PREFIXES):
            return await handler(request)
        who = budgets.who(request.headers)
        await budgets.check(who)
        try:
            return await handler(request)
        finally:
            await budgets.charge(who, request.get(COST, 0.0))
    return budget


BUDGETS = web.AppKey("budgets", Budgets)
