"""The remote machinery's documented limits: which HTTP statuses are retried, the politeness
pause between a worker's calls, and a connect timeout that is not the whole-request timeout."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Iterator

import pytest

from inferline.core.configs import ModelParams, RemoteParams
from inferline.core.types import Conversation
from inferline.engines.openai_compat import RemoteInferenceEngine
from inferline.errors import FatalEngineError, RetryableEngineError
from tests.fixtures.fault_server import FaultServer, Scenario

FAST = {"retry_backoff_base": 0.01, "retry_backoff_max": 0.05}


def make(url: str, **remote: object) -> RemoteInferenceEngine:
    return RemoteInferenceEngine(ModelParams(model_name="m"),
                                 remote_params=RemoteParams(api_url=url, **{**FAST, **remote}))


def prompts(n: int) -> list[Conversation]:
    return [Conversation.from_prompt(f"q{i}") for i in range(n)]


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried_then_served(fault_server: FaultServer,
                                                          status: int) -> None:
    scenario = Scenario(mode="status", status=status, faults=1)
    async with make(fault_server.url(scenario), max_retries=2) as engine:
        [out] = await engine.ainfer(prompts(1))
    assert out.last_message().text == "echo: q0" and len(scenario.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_fatal_and_sent_once(fault_server: FaultServer,
                                                     status: int) -> None:
    scenario = Scenario(mode="status", status=status, faults=1)
    async with make(fault_server.url(scenario), max_retries=3) as engine:
        with pytest.raises(FatalEngineError) as info:
            await engine.ainfer(prompts(1))
    assert info.value.status == status and f"injected {status}" in str(info.value)
    assert len(scenario.requests) == 1


async def test_politeness_policy_spaces_each_workers_calls(fault_server: FaultServer) -> None:
    scenario = Scenario()
    async with make(fault_server.url(scenario), num_workers=1, politeness_policy=0.25) as engine:
        out = await engine.ainfer(prompts(3))
    assert [o.last_message().text for o in out] == ["echo: q0", "echo: q1", "echo: q2"]
    times = [r["t"] for r in scenario.requests]
    assert all(b - a >= 0.24 for a, b in itertools.pairwise(times)), times


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: a new TCP connect hangs (SYNs are dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield port
    for sock in (*fillers, server):
        sock.close()


async def test_connect_timeout_bounds_only_the_connect(unanswered_port: int) -> None:
    engine = make(f"http://127.0.0.1:{unanswered_port}/v1", connect_timeout=0.3,
                  connection_timeout=60, max_retries=0)
    start = time.monotonic()
    async with engine:
        with pytest.raises(RetryableEngineError) as info:
            await asyncio.wait_for(engine.ainfer(prompts(1)), timeout=30)
    assert time.monotonic() - start < 5
    assert "could not connect within 0.3s (remote_params.connect_timeout)" in str(info.value)
