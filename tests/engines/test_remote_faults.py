"""The shared remote machinery against a misbehaving server: each fault is either
retried and served, or raised as a typed error; nothing lost, order kept."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from inferline.core.configs import (
    GenerationParams,
    GuidedDecodingParams,
    InferenceConfig,
    ModelParams,
    RemoteParams,
)
from inferline.core.types import Conversation
from inferline.engines.openai_compat import RemoteInferenceEngine
from inferline.errors import (
    EngineUnavailableError,
    FatalEngineError,
    RetryableEngineError,
    UnsupportedParameterError,
)
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.vllm_server import free_port

FAST = {"retry_backoff_base": 0.01, "retry_backoff_max": 0.2}


def make(url: str, **remote: Any) -> RemoteInferenceEngine:
    return RemoteInferenceEngine(ModelParams(model_name="m"),
                                 remote_params=RemoteParams(api_url=url, **{**FAST, **remote}))


def convs(n: int, prefix: str = "q") -> list[Conversation]:
    return [Conversation.from_prompt(f"{prefix}{i}") for i in range(n)]


def answers(outputs: list[Conversation]) -> list[str]:
    return [c.last_message().text for c in outputs]  # type: ignore[union-attr]


async def test_429_waits_retry_after_then_serves_all_in_order(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="status", status=429, faults=1, retry_after="0.3")
    async with make(fault_server.url(scenario), num_workers=4, retry_backoff_max=5) as engine:
        out = await engine.ainfer(convs(6))
    assert answers(out) == [f"echo: q{i}" for i in range(6)]
    for i in range(6):
        first, second = [r["t"] for r in scenario.requests if r["prompt"] == f"q{i}"]
        assert second - first >= 0.29  # honoured the server's Retry-After


async def test_retry_after_is_capped_by_retry_backoff_max(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="status", status=429, faults=1, retry_after="3600")
    async with make(fault_server.url(scenario), retry_backoff_max=0.1) as engine:
        [out] = await asyncio.wait_for(engine.ainfer(convs(1)), timeout=10)
    assert out.last_message().text == "echo: q0"


async def test_503_burst_is_absorbed(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="status", status=503, burst=8)
    async with make(fault_server.url(scenario), num_workers=4, max_retries=5) as engine:
        out = await engine.ainfer(convs(12))
    assert answers(out) == [f"echo: q{i}" for i in range(12)]
    assert len(scenario.requests) == 12 + 8


async def test_stall_past_timeout_is_retried(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="stall", faults=1, stall_s=20)
    async with make(fault_server.url(scenario), connection_timeout=0.5, num_workers=3) as engine:
        out = await asyncio.wait_for(engine.ainfer(convs(3)), timeout=15)
    assert answers(out) == ["echo: q0", "echo: q1", "echo: q2"]


async def test_endless_stall_gives_retryable_timeout_error(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="stall", faults=-1, stall_s=20)
    async with make(fault_server.url(scenario), connection_timeout=0.3, max_retries=1) as engine:
        with pytest.raises(RetryableEngineError, match="connection_timeout"):
            await asyncio.wait_for(engine.ainfer(convs(1)), timeout=15)
    assert len(scenario.requests) == 2


async def test_malformed_json_in_200_is_retried(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="malformed", faults=1)
    async with make(fault_server.url(scenario)) as engine:
        out = await engine.ainfer(convs(2))
    assert answers(out) == ["echo: q0", "echo: q1"]
    assert len(scenario.requests) == 4


async def test_always_malformed_ends_retryable(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="malformed", faults=-1)
    async with make(fault_server.url(scenario), max_retries=2) as engine:
        with pytest.raises(RetryableEngineError, match="malformed JSON") as info:
            await engine.ainfer(convs(1))
    assert info.value.status == 200 and len(scenario.requests) == 3


async def test_401_is_fatal_and_not_retried(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="status", status=401, faults=-1)
    async with make(fault_server.url(scenario), max_retries=5) as engine:
        with pytest.raises(FatalEngineError) as info:
            await engine.ainfer(convs(1))
    assert info.value.status == 401 and "injected 401" in str(info.value)
    assert len(scenario.requests) == 1


async def test_error_event_inside_200_stream_raises(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="stream_error", faults=-1)
    got: list[str] = []
    async with make(fault_server.url(scenario), max_retries=3) as engine:
        with pytest.raises(RetryableEngineError, match="mid-stream failure"):
            async for chunk in engine.astream(Conversation.from_prompt("hi")):
                got.append(chunk.text)
    assert "".join(got) == "half an"  # what arrived before the error was delivered
    assert len(scenario.requests) == 1  # not retried once text went out


async def test_stream_retries_failures_before_first_chunk(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="status", status=503, faults=2)
    async with make(fault_server.url(scenario)) as engine:
        chunks = [c async for c in engine.astream(Conversation.from_prompt("a b c"))]
    assert "".join(c.text for c in chunks) == "echo: a b c"
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.completion_tokens == 4


async def test_a_stream_left_early_frees_its_worker_and_connection(
        fault_server: FaultServer) -> None:
    scenario = Scenario()
    async with make(fault_server.url(scenario), num_workers=1) as engine:
        stream = engine.astream(Conversation.from_prompt("a b c d"))
        assert (await anext(stream)).text
        await stream.aclose()  # a client that went away after the first words
        out = await asyncio.wait_for(engine.ainfer(convs(1)), timeout=10)  # the one slot is free
    assert answers(out) == ["echo: q0"]


async def test_partial_results_report_failures_and_keep_the_rest(fault_server: FaultServer) -> None:
    scenario = Scenario(fatal_marker="FAIL")
    prompts = ["a", "FAIL b", "c", "FAIL d", "e"]
    async with make(fault_server.url(scenario), num_workers=2) as engine:
        rows = await engine.ainfer_partial([Conversation.from_prompt(p) for p in prompts])
        with pytest.raises(FatalEngineError, match="bad prompt"):
            await engine.ainfer([Conversation.from_prompt(p) for p in prompts])
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert [type(r.error).__name__ if r.error else None for r in rows] == [
        None, "FatalEngineError", None, "FatalEngineError", None]
    assert [r.conversation.last_message().text for r in rows if r.conversation] == [
        "echo: a", "echo: c", "echo: e"]


async def test_num_workers_bounds_requests_in_flight(fault_server: FaultServer) -> None:
    scenario = Scenario(delay_s=0.05)
    async with make(fault_server.url(scenario), num_workers=3) as engine:
        out = await engine.ainfer(convs(15))
    assert answers(out) == [f"echo: q{i}" for i in range(15)]
    assert scenario.max_in_flight == 3


async def test_cancelling_a_batch_does_not_send_the_whole_queue(
        fault_server: FaultServer) -> None:
    scenario = Scenario(delay_s=0.05)
    async with make(fault_server.url(scenario), num_workers=2) as engine:
        batch = asyncio.create_task(engine.agenerate(convs(1000)))
        await asyncio.sleep(0.12)
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
        await asyncio.sleep(0.2)
    assert 2 <= len(scenario.requests) <= 8  # a bounded window, not 1000 tasks up front


async def test_requests_per_minute_spaces_requests(fault_server: FaultServer) -> None:
    scenario = Scenario()
    async with make(fault_server.url(scenario), num_workers=4, requests_per_minute=600) as engine:
        await engine.ainfer(convs(4))
    times = sorted(r["t"] for r in scenario.requests)
    assert all(b - a >= 0.08 for a, b in itertools.pairwise(times))  # 60/600 = 0.1 s apart


async def test_tokens_per_minute_holds_back_requests_that_would_exceed_it(
        fault_server: FaultServer) -> None:
    scenario = Scenario(delay_s=0.1)
    engine = RemoteInferenceEngine(  # each request may use ~300 tokens; 600 per minute allowed
        ModelParams(model_name="m"), generation_params=GenerationParams(max_new_tokens=300),
        remote_params=RemoteParams(api_url=fault_server.url(scenario), num_workers=5,
                                   tokens_per_minute=600))
    async with engine:
        out = await asyncio.wait_for(engine.ainfer(convs(6)), timeout=20)
    assert answers(out) == [f"echo: q{i}" for i in range(6)]
    assert scenario.max_in_flight == 2  # the budget, not num_workers, bounded concurrency


async def test_connection_refused_is_retryable() -> None:
    async with make(f"http://127.0.0.1:{free_port()}", max_retries=1) as engine:
        with pytest.raises(RetryableEngineError, match="connection failed"):
            await asyncio.wait_for(engine.ainfer(convs(1)), timeout=10)


async def test_missing_key_is_unavailable_and_names_the_variable(fault_server: FaultServer) -> None:
    engine = make(fault_server.url(Scenario()), api_key_env_varname="MY_KEY")
    with pytest.raises(EngineUnavailableError, match="MY_KEY"):
        await engine.ainfer(convs(1))


async def test_key_is_sent_but_never_shown(fault_server: FaultServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-9f8e7d6c5b4a"
    monkeypatch.setenv("MY_KEY", secret)
    scenario = Scenario(mode="status", status=500, faults=-1, echo_auth=True)
    engine = make(fault_server.url(scenario), api_key_env_varname="MY_KEY", max_retries=1)
    with structlog.testing.capture_logs() as logs, pytest.raises(RetryableEngineError) as info:
        await engine.ainfer(convs(1))
    await engine.aclose()
    assert scenario.requests[0]["headers"]["Authorization"] == f"Bearer {secret}"
    assert "got Bearer ***" in str(info.value)
    shown = [str(info.value), repr(engine), repr(engine.remote_params), str(logs)]
    assert logs and not any(secret in text for text in shown)


async def test_injected_session_is_used_and_left_open(fault_server: FaultServer) -> None:
    scenario = Scenario()
    async with aiohttp.ClientSession(headers={"X-Trace": "t1"}) as session:
        engine = RemoteInferenceEngine(ModelParams(model_name="m"), session=session,
                                       remote_params=RemoteParams(api_url=fault_server.url(scenario)))
        await engine.ainfer(convs(1))
        await engine.aclose()
        assert not session.closed
    assert scenario.requests[0]["headers"]["X-Trace"] == "t1"


def test_sync_infer_works_and_close_releases_the_session(fault_server: FaultServer) -> None:
    engine = make(fault_server.url(Scenario()), num_workers=2)
    assert answers(engine.infer(convs(3))) == ["echo: q0", "echo: q1", "echo: q2"]
    sessions = [s.session for s in engine._states._states.values()]
    engine.close()
    assert sessions and all(s.closed for s in sessions)


async def test_sync_infer_inside_a_running_loop(fault_server: FaultServer) -> None:
    engine = make(fault_server.url(Scenario()))
    out = engine.infer(convs(1))  # runs on the portal loop, not this (busy) one
    engine.close()
    assert answers(out) == ["echo: q0"]


async def test_unsupported_parameter_fails_each_row_without_a_request(
        fault_server: FaultServer) -> None:
    regex = InferenceConfig(generation=GenerationParams(
        guided_decoding=GuidedDecodingParams(regex="[0-9]+")))
    scenario = Scenario()
    async with make(fault_server.url(scenario)) as engine:
        rows = await asyncio.wait_for(engine.ainfer_partial(convs(3), regex), timeout=10)
        with pytest.raises(UnsupportedParameterError, match="guided_decoding.regex"):
            await engine.ainfer(convs(1), regex)
        [plain] = await engine.ainfer(convs(1))  # the engine still serves other requests
    assert all(isinstance(r.error, UnsupportedParameterError) for r in rows)
    assert plain.last_message().text == "echo: q0"
    assert len(scenario.requests) == 1


SCRIPT = """
import asyncio, sys
from inferline.core.configs import ModelParams, RemoteParams
from inferline.core.types import Conversation
from inferline.engines.openai_compat import RemoteInferenceEngine
from inferline.pipelines.fallback import FallbackChain
engine = RemoteInferenceEngine(ModelParams(model_name="m"),
                               remote_params=RemoteParams(api_url=sys.argv[1]))
print(engine.infer([Conversation.from_prompt("hi")])[0].last_message().text)
chain = FallbackChain("c", [engine])
print(chain.infer([Conversation.from_prompt("ho")])[0].last_message().text)
"""


def test_a_script_that_never_closes_its_engine_exits_quietly(fault_server: FaultServer) -> None:
    """The seed's examples call infer() and exit: no 'Unclosed client session' warnings."""
    result = subprocess.run([sys.executable, "-W", "error::ResourceWarning", "-c", SCRIPT,
                             fault_server.url(Scenario())], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["echo:", "hi", "echo:", "ho"]
    assert "Unclosed" not in result.stderr and "Warning" not in result.stderr
