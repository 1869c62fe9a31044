"""Each engine's state for ``GET /ready``: loaded, available, circuit_open or unavailable (with
the reason).

    body = await readiness(engines)
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
from typing import Any

from inferline.errors import ConfigurationError, EngineUnavailableError
from inferline.pipelines.breaker import Breakers

PREFLIGHT_TIMEOUT_S = 5.0
SERVING_STATES = frozenset({"loaded", "available"})


async def readiness(engines: Any, breakers: dict[str, Any] | None = None,
                    retired: dict[str, str] | None = None) -> dict[str, Any]:
    """The state of every engine, and whether any of them can serve.

    ``breakers`` maps engine names to the fallback chains' circuit breakers; ``retired``
    names the engines a chain took out of service (a failed preflight or load), with why.
    """
    breakers, retired = breakers if breakers is not None else {}, retired or {}
    store = breakers.store if isinstance(breakers, Breakers) else None
    if isinstance(breakers, Breakers):  # the shared circuits, or the local ones if unreachable
        breakers = await breakers.refresh(engines.names()) or breakers
    states: dict[str, dict[str, Any]] = {}
    for name in engines.names():
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


async def engine_state(engines: Any, name: str) -> dict[str, Any]:
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

