"""Fallback under load, saturation (429), timeouts: what a client of a busy gateway sees."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import openai
import pytest

from tests.fixtures.fault_server import Scenario
from tests.fixtures.gateway import remote

pytestmark = pytest.mark.slow


def ask(client: openai.AsyncOpenAI, model: str, i: int):
    return client.chat.completions.create(
        model=model, max_tokens=4, messages=[{"role": "user", "content": f"question {i}"}])


async def test_first_engine_dies_mid_run_and_no_request_fails(gateway, upstream) -> None:
    primary = await upstream(Scenario(delay_s=0.05))
    backup = await upstream(Scenario())
    gw = await gateway({"primary": remote(primary.url), "backup": remote(backup.url)},
                       chains={"default": ["primary", "backup"]})
    client = gw.client()
    tasks = [asyncio.create_task(ask(client, "default", i)) for i in range(60)]
    while len(primary.scenario.requests) < 15:  # kill it once it has served some
        await asyncio.sleep(0.01)
    await primary.stop()
    replies = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    served = Counter(r.model_extra["inferline"]["served_by"] for r in replies)
    assert sorted(r.choices[0].message.content for r in replies) == sorted(
        f"echo: question {i}" for i in range(60))
    assert served["primary"] > 0 and served["backup"] > 0
    after = await ask(client, "default", 99)
    assert after.model_extra["inferline"]["served_by"] == "backup"
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/metrics") as resp:
        metrics = await resp.text()
    assert 'inferline_fallbacks_total{failed_engine="primary",model="default"}' in metrics


async def test_saturated_gateway_answers_429_with_retry_after(gateway, upstream) -> None:
    slow = await upstream(Scenario(delay_s=1.0))
    gw = await gateway({"slow": remote(slow.url)}, max_concurrency=2)
    client = gw.client()
    busy = [asyncio.create_task(ask(client, "slow", i)) for i in range(2)]
    while slow.scenario.in_flight < 2:
        await asyncio.sleep(0.01)
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(client, "slow", 3)
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body["code"] == "server_busy"
    assert all(r.choices[0].message.content for r in await asyncio.gather(*busy))
    assert (await ask(client, "slow", 4)).choices[0].message.content == "echo: question 4"


async def test_request_timeout_is_504_for_plain_and_streamed_requests(gateway, upstream):
    slow = await upstream(Scenario(delay_s=3.0))
    gw = await gateway({"slow": remote(slow.url)}, request_timeout_s=0.5)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.client().chat.completions.create(
                model="slow", stream=stream, messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 504 and caught.value.body["code"] == "timeout"


async def test_failure_mid_stream_reaches_the_client_as_an_error_event(gateway, upstream):
    broken, healthy = await upstream(Scenario(mode="stream_error", faults=-1)), await upstream()
    gw = await gateway({"broken": remote(broken.url), "healthy": remote(healthy.url)})
    stream = await gw.client().chat.completions.create(
        model="broken", stream=True, messages=[{"role": "user", "content": "hi"}])
    received = []
    with pytest.raises(openai.APIError, match="mid-stream"):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "half an"  # what was sent before the failure stays sent
    reply = await ask(gw.client(), "healthy", 1)  # the gateway itself is fine
    assert reply.choices[0].message.content == "echo: question 1"
