"""The gateway's cost: in every answer's ``inferline`` field, in ``/metrics``
(``inferline_cost_total``), and capped per API key per UTC day (429 in the asked API's
shape), in memory or shared by replicas through a real Redis."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from inferline.containers import build_container, started
from inferline.core.cost import Price
from inferline.errors import ConfigurationError
from inferline.server import ApiKeys, create_app
from inferline.server.budgets import key_id
from inferline.settings import load_settings
from inferline.settings.model import EngineSettings
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.gateway import remote, start_app
from tests.fixtures.redis_server import RedisServer

pytestmark = pytest.mark.slow

IN, OUT, M = 2.5, 10.0, 1_000_000
A, B = "key-a-0123456789", "key-b-9876543210"
# $0.01 a token: "hi there" is 2 prompt tokens, "echo: hi there" 3: $0.05 a request
DEAR = Price(input_per_million=10_000, output_per_million=10_000)


def priced(url: str, price: Price) -> EngineSettings:
    return remote(url).model_copy(update={"price": price})


async def post(url: str, path: str, body: dict[str, Any], **headers: str,
               ) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.post(url + path, json=body,
                                                          headers=headers) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


def chat_body(prompt: str = "hi there") -> dict[str, Any]:
    return {"model": "up", "max_tokens": 8, "messages": [{"role": "user", "content": prompt}]}


def messages_body(prompt: str = "hi there") -> dict[str, Any]:
    return {"model": "up", "max_tokens": 8, "messages": [{"role": "user", "content": prompt}]}


async def test_cost_is_in_the_inferline_field_and_counted_in_metrics(
        gateway: Any, fault_server: FaultServer) -> None:
    gw = await gateway({"up": priced(fault_server.url(Scenario()),
                                     Price(input_per_million=IN, output_per_million=OUT))})
    client = gw.client()
    reply = await client.chat.completions.create(**chat_body())
    usage, served = reply.usage, reply.model_extra["inferline"]  # type: ignore[index]
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 3)
    assert served["cost"] == 2 * IN / M + 3 * OUT / M  # exactly: price x the server's counts

    stream = await client.chat.completions.create(**chat_body("one two three"), stream=True)
    last = [chunk async for chunk in stream if chunk.choices and chunk.choices[0].finish_reason]
    streamed = last[-1].model_extra["inferline"]  # type: ignore[index]
    assert streamed["cost"] == 3 * IN / M + 4 * OUT / M

    status, message, _ = await post(gw.url, "/v1/messages", messages_body("a b c d"))
    assert status == 200 and message["usage"] == {"input_tokens": 4, "output_tokens": 5}
    assert message["inferline"]["cost"] == 4 * IN / M + 5 * OUT / M

    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    [total] = re.findall(r'^inferline_cost_total\{engine="up"\} (\S+)$', text, re.M)
    assert float(total) == pytest.approx(served["cost"] + streamed["cost"]
                                         + message["inferline"]["cost"], rel=1e-9)
    assert "# TYPE inferline_cost_total counter" in text


async def test_a_key_over_its_daily_cap_gets_429_while_another_is_served(
        gateway: Any, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIG_SPENDER_KEY", B)
    gw = await gateway({"up": priced(fault_server.url(Scenario()), DEAR)}, keys=[A, B],
                       api_key_env_varnames=["BIG_SPENDER_KEY"],
                       budgets={"per_key_per_day": 0.08, "keys": {"BIG_SPENDER_KEY": 1.0}})
    bearer_a = {"Authorization": f"Bearer {A}"}
    with capture_logs() as logs:
        for _ in range(2):  # $0 then $0.05 spent: both under $0.08
            status, _, _ = await post(gw.url, "/v1/chat/completions", chat_body(), **bearer_a)
            assert status == 200
        status, body, headers = await post(gw.url, "/v1/chat/completions", chat_body(),
                                           **bearer_a)
        assert status == 429
        error = body["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "budget_exceeded")
        assert f"API key {key_id(A)}" in error["message"] and A not in error["message"]
        assert "has spent $0.100000 of its $0.080000" in error["message"]
        assert 0 < int(headers["Retry-After"]) <= 86400  # until 00:00 UTC

        status, body, _ = await post(gw.url, "/v1/messages", messages_body(), **{"x-api-key": A})
        assert status == 429 and body["type"] == "error"  # Anthropic's shape on /v1/messages
        assert body["error"]["type"] == "rate_limit_error"
        assert "daily budget spent" in body["error"]["message"]
        status, _, _ = await post(gw.url, "/v1/chat/completions", chat_body(),  # no way around
                                  **{"x-api-key": A, "Authorization": "Bearer made-up"})
        assert status == 429

        for _ in range(3):  # key B has a cap of its own, by the variable that holds it
            status, _, _ = await post(gw.url, "/v1/chat/completions", chat_body(),
                                      Authorization=f"Bearer {B}")
            assert status == 200
    refused = [e for e in logs if e["event"] == "budget_exceeded"]
    assert refused and {e["key"] for e in refused} == {key_id(A)}
    assert not any(A in repr(e) or B in repr(e) for e in logs)  # never the key itself


async def test_without_keys_the_server_has_one_budget(gateway: Any,
                                                      fault_server: FaultServer) -> None:
    gw = await gateway({"up": priced(fault_server.url(Scenario()), DEAR)},
                       budgets={"per_key_per_day": 0.04})
    assert (await post(gw.url, "/v1/chat/completions", chat_body()))[0] == 200
    status, body, _ = await post(gw.url, "/v1/chat/completions", chat_body(),
                                 Authorization="Bearer made-up")  # no way around it
    assert status == 429 and "this server has spent $0.050000" in body["error"]["message"]


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[[Path], Any]]:
    """Gateway replicas as ``inferline serve`` builds them, each with its own container."""
    async with contextlib.AsyncExitStack() as stack:
        async def start(path: Path) -> list[str]:
            urls = []
            for _ in range(2):
                container = await stack.enter_async_context(started(build_container(path)))
                server = container.settings().server
                app = create_app(container.chains(), container.engines(), None, server,
                                 keys=ApiKeys.from_env(server.api_key_env_varnames),
                                 spend_store=container.state())
                runner, url = await start_app(app)
                stack.push_async_callback(runner.cleanup)
                urls.append(url)
            return urls

        yield start


async def test_replicas_share_a_keys_daily_cap_through_redis(
        tmp_path: Path, fault_server: FaultServer, redis_server: RedisServer,
        replicas: Callable[[Path], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.asyncio import Redis

    monkeypatch.setenv("KEY_A", A)
    monkeypatch.setenv("KEY_B", B)
    prefix = "budgets-test:"
    path = tmp_path / "settings.yaml"
    path.write_text(f"""\
engines:
  up: {{type: REMOTE, model: {{model_name: m}}, price: {{input_per_million: 10000,
        output_per_million: 10000}}, remote_params: {{api_url: "{fault_server.url(Scenario())}/v1",
        max_retries: 0}}}}
server: {{api_key_env_varnames: [KEY_A, KEY_B], budgets: {{per_key_per_day: 0.08}}}}
state: {{backend: redis, url: "{redis_server.url}", prefix: "{prefix}"}}
""")
    one, two = await replicas(path)
    bearer_a = {"Authorization": f"Bearer {A}"}
    assert (await post(one, "/v1/chat/completions", chat_body(), **bearer_a))[0] == 200
    assert (await post(two, "/v1/chat/completions", chat_body(), **bearer_a))[0] == 200
    # replica one served A once ($0.05, under the cap); it refuses because two spent too
    status, body, _ = await post(one, "/v1/chat/completions", chat_body(), **bearer_a)
    assert status == 429 and "has spent $0.100000" in body["error"]["message"]
    assert (await post(two, "/v1/chat/completions", chat_body(),
                       Authorization=f"Bearer {B}"))[0] == 200

    redis = Redis.from_url(redis_server.url)
    try:
        keys = [k.decode() for k in await redis.keys(f"{prefix}spend:*")]
    finally:
        await redis.aclose()
    assert sorted(keys) == sorted(f"{prefix}spend:{day}:{key_id(k)}" for k in (A, B)
                                  for day in {keys[0].split(":")[2]})
    assert not any(A in k or B in k for k in keys)


def test_a_budget_for_a_key_variable_the_server_does_not_use_is_an_error(
        tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("server: {api_key_env_varnames: [KEY_A], budgets: {keys: {KEY_Z: 1.0}}}\n")
    with pytest.raises(ConfigurationError, match="KEY_Z"):
        load_settings(path)
