"""/metrics counts each fallback and each failed engine attempt, by engine and error."""

from __future__ import annotations

import aiohttp
import pytest

from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.gateway import free_port, remote

pytestmark = pytest.mark.slow


async def test_fallbacks_and_engine_errors_are_counted(gateway, fault_server: FaultServer) -> None:
    gw = await gateway({"dead": remote(f"http://127.0.0.1:{free_port()}/v1"),
                        "echo": remote(fault_server.url(Scenario()))},
                       chains={"c": ["dead", "echo"]})
    client = gw.client()
    for _ in range(2):
        reply = await client.chat.completions.create(
            model="c", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "echo: hi"
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    assert 'inferline_fallbacks_total{failed_engine="dead",model="c"} 2.0' in text
    assert 'inferline_engine_errors_total{engine="dead",error="RetryableEngineError"} 2.0' in text
    assert 'engine="echo",error=' not in text
    assert 'inferline_tokens_total{engine="echo",kind="completion"} 4.0' in text
