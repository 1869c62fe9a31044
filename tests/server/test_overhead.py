"""The gateway says how long it held each request beyond the engine's own time: the
``x-inferline-overhead-ms`` header and the ``inferline_gateway_overhead_seconds`` histogram."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from inferline.engines.base import BaseInferenceEngine
from tests.fixtures.fault_server import Scenario
from tests.fixtures.gateway import remote

BODY = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def timed_post(url: str, body: dict[str, Any]) -> tuple[float, float]:
    """(client-side milliseconds, the overhead header's milliseconds)."""
    async with aiohttp.ClientSession() as session:
        began = time.perf_counter()
        async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
            await resp.read()
        took = (time.perf_counter() - began) * 1000
        assert resp.status == 200
        return took, float(resp.headers["x-inferline-overhead-ms"])


async def test_overhead_leaves_out_the_upstream_wait(gateway: Any, upstream: Any) -> None:
    up = await upstream(Scenario(delay_s=0.05))
    gw = await gateway({"e": remote(up.url)}, chains={"default": ["e"]})
    for _ in range(5):
        took, overhead = await timed_post(gw.url, BODY)
        assert overhead > 0
        # the upstream's 50 ms are the engine's, not ours (0.2 ms: the clocks' rounding)
        assert overhead + 50 <= took + 0.2, (overhead, took)
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    assert "inferline_gateway_overhead_seconds_count 5.0" in text
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/health") as resp:
        assert "x-inferline-overhead-ms" not in resp.headers  # no engine, no overhead to split


@pytest.mark.slow
async def test_overhead_leaves_out_a_local_engine_time(gateway: Any,
                                                       llama_engine: BaseInferenceEngine) -> None:
    gw = await gateway({"llama": llama_engine}, chains={"default": ["llama"]})
    took, overhead = await timed_post(gw.url, {**BODY, "max_tokens": 16})
    assert 0 < overhead < took / 2, (overhead, took)
