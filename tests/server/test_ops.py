"""The operator's endpoints: /health, /ready, /v1/models, /metrics, and access logs."""

from __future__ import annotations

import aiohttp
import pytest
from structlog.testing import capture_logs

from inferline.core.configs import ModelParams
from inferline.server.gateway import GATEWAY
from inferline.settings.model import EngineSettings, LogSettings
from tests.fixtures.fault_server import Scenario
from tests.fixtures.gateway import remote

pytestmark = pytest.mark.slow

SECRET_PROMPT = "my-secret-prompt-text"


def keyed_engine() -> EngineSettings:
    """An OpenAI engine whose key variable is unset (the test environment has none)."""
    return EngineSettings(type="OPENAI", model=ModelParams(model_name="gpt-4o-mini"),
                          remote_params={"api_key_env_varname": "GATEWAY_TEST_KEY"})


async def get(url: str) -> tuple[int, dict | str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        is_json = resp.content_type == "application/json"
        return resp.status, await (resp.json() if is_json else resp.text())


async def test_ready_reports_each_engine_and_503_when_none_can_serve(gateway, fault_server):
    gw = await gateway({"echo": remote(fault_server.url(Scenario())), "cloud": keyed_engine()})
    status, body = await get(f"{gw.url}/ready")
    assert status == 200 and body["ready"] is True
    assert body["engines"]["echo"]["state"] == "available"
    assert body["engines"]["cloud"]["state"] == "unavailable"
    assert "GATEWAY_TEST_KEY" in body["engines"]["cloud"]["reason"]
    alone = await gateway({"cloud": keyed_engine()})
    status, body = await get(f"{alone.url}/ready")
    assert status == 503 and body["ready"] is False
    assert (await get(f"{alone.url}/health"))[0] == 200


async def test_ready_reports_an_open_circuit(gateway, fault_server) -> None:
    gw = await gateway({"echo": remote(fault_server.url(Scenario())),
                        "other": remote(fault_server.url(Scenario()))},
                       chains={"c": ["echo", "other"]})
    breaker = gw.app[GATEWAY].chains.get("c").breaker(gw.engines.get("echo"))
    for _ in range(breaker.failure_threshold):
        breaker.record(ok=False)
    status, body = await get(f"{gw.url}/ready")
    assert status == 200 and body["engines"]["echo"]["state"] == "circuit_open"
    assert body["engines"]["other"]["state"] == "available"


async def test_models_lists_chains_and_engines(gateway, fault_server) -> None:
    gw = await gateway({"echo": remote(fault_server.url(Scenario()))},
                       chains={"default": ["echo"]})
    models = await gw.client().models.list()
    assert {(m.id, m.model_extra["inferline"]["kind"]) for m in models.data} == {
        ("default", "chain"), ("echo", "engine")}


async def test_metrics_count_requests_latency_and_tokens(gateway, fault_server) -> None:
    gw = await gateway({"echo": remote(fault_server.url(Scenario()))})
    client = gw.client()
    for _ in range(3):
        await client.chat.completions.create(model="echo", max_tokens=4,
                                             messages=[{"role": "user", "content": "a b"}])
    status, text = await get(f"{gw.url}/metrics")
    assert status == 200
    assert ('inferline_http_requests_total{method="POST",route="/v1/chat/completions",'
            'status="200"} 3.0') in text
    assert 'inferline_http_request_duration_seconds_count{route="/v1/chat/completions"} 3.0' in text
    assert 'inferline_tokens_total{engine="echo",kind="completion"} 9.0' in text  # "echo: a b"


@pytest.mark.parametrize("log_prompts", [False, True])
async def test_access_logs_carry_prompts_only_when_enabled(gateway, fault_server,
                                                           log_prompts: bool) -> None:
    gw = await gateway({"echo": remote(fault_server.url(Scenario()))},
                       log=LogSettings(log_prompts=log_prompts))
    with capture_logs() as logs:
        await gw.client().chat.completions.create(
            model="echo", max_tokens=8, messages=[{"role": "user", "content": SECRET_PROMPT}])
    [access] = [e for e in logs if e["event"] == "http_request"]
    assert access["status"] == 200 and access["served_by"] == "echo"
    assert (SECRET_PROMPT in repr(logs)) is log_prompts


async def test_ready_shows_load_failures_and_not_request_errors(gateway, fault_server) -> None:
    """A bad parameter fails that request on that engine; a failed load retires the engine,
    and /ready says so with the reason."""
    from inferline.engines.testing import FakeEngine
    from inferline.errors import EngineUnavailableError

    class BrokenLoad(FakeEngine):
        def _load(self) -> None:
            raise EngineUnavailableError("weights are corrupt", engine=self.name)

    picky = FakeEngine("picky", supported=frozenset({"max_new_tokens"}))
    gw = await gateway({"picky": picky, "broken": BrokenLoad("broken"),
                        "echo": remote(fault_server.url(Scenario()))},
                       chains={"c": ["picky", "broken", "echo"]})
    client = gw.client()
    reply = await client.chat.completions.create(
        model="c", messages=[{"role": "user", "content": "hi"}], top_p=0.5)
    served = reply.model_extra["inferline"]
    assert served["served_by"] == "echo"
    assert [(a["engine"], a["error"]) for a in served["attempts"]] == [
        ("picky", "UnsupportedParameterError"), ("broken", "EngineUnavailableError"),
        ("echo", None)]
    status, body = await get(f"{gw.url}/ready")
    assert body["engines"]["picky"]["state"] == "loaded"  # still in service
    assert body["engines"]["broken"] == {"state": "unavailable",
                                         "reason": "broken: weights are corrupt"}
    plain = await client.chat.completions.create(
        model="c", messages=[{"role": "user", "content": "hi"}])
    assert plain.model_extra["inferline"]["served_by"] == "picky"
