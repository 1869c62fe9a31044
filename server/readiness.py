"""Each engine's state for ``GET /ready``: loaded, available, circuit_open or unavailable (with
the reason).

    body = await readiness(engines, chains)
    # {"ready": true, "engines": {"local": {"state": "loaded"},
    #   "cloud": {"state": "unavailable", "reason": "API key variable OPENAI_API_KEY is not set"}}}

``available`` means the engine's preflight passed and it loads on first use.
With breakers shared by replicas (``state: {backend: redis}``) the circuits shown are the
shared ones, and ``state`` says whether the store answers (``degraded``: this replica
serves on its local state; still ready).
Preflight is cheap (packages, files, keys, memory): nothing is loaded here.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from inferline.errors import ConfigurationError, EngineUnavailableError

if TYPE_CHECKING:
    from inferline.engines.catalog import EngineCatalog
    from inferline.pipelines.catalog import ChainCatalog

PREFLIGHT_TIMEOUT_S = 5.0
SERVING_STATES = frozenset({"loaded", "available"})


async def readiness(engines: EngineCatalog, chains: ChainCatalog) -> dict[str, Any]:
    """The state of every engine, and whether any can serve; ``chains`` hold the breakers and
    the engines a chain took out of service (a failed preflight or load), with why."""
    names, retired, store = engines.names(), chains.retired(), chains.breakers.store
    # the shared circuits, or the local ones (also while the store is unreachable)
    breakers = await chains.breakers.refresh(names) or chains.breakers
    states: dict[str, dict[str, Any]] = {}
    for name in names:
        breaker = breakers.get(name)
        if name in retired:
            states[name] = {"state": "unavailable", "reason": retired[name]}
        elif breaker is not None and breaker.state == "open":
            states[name] = {"state": "circuit_open",
                            "reason": f"{breaker.failures} straight failures"}
        else:
            states[name] = await engine_state(engines, name)
    ready = any(s["state"] in SERVING_STATES for s in states.values())
    body = {"ready": ready, "engines": states}
    return body if store is None else {**body, "state": store.status()}


async def engine_state(engines: EngineCatalog, name: str) -> dict[str, Any]:
    try:
        engine = engines.get(name)  # construction only: cheap
    except ConfigurationError as exc:
        return {"state": "unavailable", "reason": str(exc)}
    if engine.describe().get("loaded"):
        return {"state": "loaded"}
    try:
        await asyncio.wait_for(asyncio.to_thread(engine.preflight), PREFLIGHT_TIMEOUT_S)
    except EngineUnavailableError as exc:
        return {"state": "unavailable", "reason": exc.message}
    except TimeoutError:
        return {"state": "unavailable", "reason": f"preflight took over {PREFLIGHT_TIMEOUT_S}s"}
    return {"state": "available"}

