"""One background event loop that runs async code for sync callers.

``infer()`` must work from plain scripts and from inside a running event loop
(a notebook, an aiohttp handler). Running every sync call on one long-lived
loop thread gives both, and lets loop-bound resources (aiohttp sessions) live
across calls.

    result = portal.run(engine.ainfer(convs))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Portal:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal loop and wait for its result (re-raising its error)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("sync inferline call made from inside an async inferline call; "
                               "await the async method (ainfer/astream) instead")
        with self._lock:  # the loop starts on first use; coroutines sent before it runs wait
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever,
                                                name="inferline-portal", daemon=True)
                self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


portal = Portal()
