"""Fallback chains over a dead server and a real engine; scripted failures; circuit breaker."""

from __future__ import annotations

import socket

import pytest
from structlog.testing import capture_logs

from inferline.core.configs import (
    GenerationParams,
    InferenceConfig,
    ModelParams,
    RemoteParams,
)
from inferline.core.types import Conversation
from inferline.engines.base import Completion
from inferline.engines.testing import FakeEngine
from inferline.errors import (
    AllEnginesFailedError,
    EngineUnavailableError,
    FatalEngineError,
    RetryableEngineError,
    UnsupportedParameterError,
)
from inferline.inference import (
    LlamaCppInferenceEngine,
    RemoteInferenceEngine,
    RemoteVLLMInferenceEngine,
)
from inferline.pipelines.breaker import CircuitBreaker
from inferline.pipelines.fallback import FallbackChain
from inferline.settings.model import ChainSettings
from tests.fixtures.fault_server import FaultServer, Scenario


def _convs(n: int) -> list[Conversation]:
    return [Conversation.from_prompt(f"q{i}") for i in range(n)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dead_server_then_real_llamacpp_serves_every_row(smollm_gguf: object) -> None:
    dead = RemoteInferenceEngine(
        ModelParams(model_name="m"), name="dead", remote_params=RemoteParams(
            api_url=f"http://127.0.0.1:{_closed_port()}/v1", max_retries=0, connect_timeout=1))
    real = LlamaCppInferenceEngine(ModelParams(model_name="smollm2-135m"), name="llama",
                                   generation_params=GenerationParams(max_new_tokens=16))
    chain = FallbackChain("c", [dead, real])
    prompts = [Conversation.from_prompt(q, "Answer in one word.") for q in
               ("What is the capital of France?", "What is the capital of Italy?")]
    with capture_logs() as logs:
        outs = chain.infer(prompts)
    assert "Paris" in outs[0].messages[-1].text and "Rome" in outs[1].messages[-1].text
    for out in outs:
        assert out.metadata["served_by"] == "llama"
        assert [a["engine"] for a in out.metadata["attempts"]] == ["dead", "llama"]
        assert out.metadata["attempts"][0]["error"] == "RetryableEngineError"
    assert any(e["event"] == "engine_fallback" and e["failed"] == "dead" for e in logs)
    real.close()
    dead.close()


def test_unavailable_engine_is_skipped_with_reason() -> None:
    chain = FallbackChain("c", [FakeEngine("gpu", unavailable="no GPU"), FakeEngine("cpu")])
    [out] = chain.infer(_convs(1))
    assert out.messages[-1].text == "cpu: q0"
    assert out.metadata["attempts"][0] == {"engine": "gpu", "error": "EngineUnavailableError",
                                           "message": "gpu: no GPU", "latency_ms": 0.0}
    assert chain.describe()["unavailable"] == {"gpu": "gpu: no GPU"}


def test_flaky_first_engine_loses_nothing_and_keeps_order() -> None:
    flaky = FakeEngine("flaky",
                       fail={i: RetryableEngineError("busy", status=503) for i in (2, 3, 5)})
    backup = FakeEngine("backup")
    chain = FallbackChain("c", [flaky, backup], ChainSettings(
        engines=["flaky", "backup"], circuit_breaker={"failure_threshold": 100}))
    convs = _convs(10)
    outputs = []
    for i in range(10):  # one call per row, as a service would make them
        outputs += chain.infer(convs[i:i + 1])
    assert [o.messages[-1].text.split(": ")[1] for o in outputs] == [f"q{i}" for i in range(10)]
    served = [o.metadata["served_by"] for o in outputs]
    assert served.count("backup") == 3 and served.count("flaky") == 7


def test_fatal_error_does_not_fall_back_unless_asked() -> None:
    def chain(fallback_on: list[str]) -> FallbackChain:
        bad = FakeEngine("bad", fail={1: FatalEngineError("bad request", status=400)})
        return FallbackChain("c", [bad, FakeEngine("ok")],
                             ChainSettings(engines=["bad", "ok"], fallback_on=fallback_on))
    with pytest.raises(FatalEngineError):
        chain(["unavailable", "retryable"]).infer(_convs(1))
    [out] = chain(["fatal"]).infer(_convs(1))
    assert out.metadata["served_by"] == "ok"


def test_all_failed_lists_every_attempt() -> None:
    chain = FallbackChain("c", [
        FakeEngine("a", unavailable="no key"),
        FakeEngine("b", fail={1: RetryableEngineError("down", status=502)})])
    with pytest.raises(AllEnginesFailedError) as err:
        chain.infer(_convs(1))
    assert [(a.engine, a.error) for a in err.value.attempts] == [
        ("a", "EngineUnavailableError"), ("b", "RetryableEngineError")]
    assert "a: EngineUnavailableError" in str(err.value) and "HTTP 502" in str(err.value)


def test_max_attempts_bounds_engines_tried() -> None:
    chain = FallbackChain("c", [FakeEngine("a", fail={1: RetryableEngineError("x")}),
                                FakeEngine("b")], ChainSettings(engines=["a", "b"], max_attempts=1))
    with pytest.raises(AllEnginesFailedError):
        chain.infer(_convs(1))


def test_circuit_breaker_opens_skips_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=lambda: now[0])
    failing = FakeEngine("a", fail={i: RetryableEngineError("down") for i in range(1, 4)})
    backup = FakeEngine("b")
    chain = FallbackChain("c", [failing, backup], breakers={"a": breaker})
    chain.infer(_convs(1))
    chain.infer(_convs(1))
    assert breaker.state == "open" and failing.calls == 2
    [out] = chain.infer(_convs(1))  # skipped while open
    assert failing.calls == 2 and out.metadata["attempts"][0]["message"] == "circuit open"
    now[0] = 11  # half-open: one trial, which fails (call 3) and re-opens
    chain.infer(_convs(1))
    assert failing.calls == 3 and breaker.state == "open"
    now[0] = 22  # trial succeeds (call 4) and closes
    [out] = chain.infer(_convs(1))
    assert out.metadata["served_by"] == "a" and breaker.state == "closed"


async def test_stream_falls_back_before_first_chunk() -> None:
    chain = FallbackChain("c", [FakeEngine("a", fail={1: RetryableEngineError("down")}),
                                FakeEngine("b")])
    chunks = [c async for c in chain.astream(_convs(1)[0])]
    assert "".join(c.text for c in chunks) == "b: q0" and chunks[0].served_by == "b"


async def test_a_request_the_first_engine_cannot_honour_does_not_retire_it(
        fault_server: FaultServer) -> None:
    """Issue 11's reproduction: top_k is refused by a, served by b; a plain request then
    goes to a again, and nothing is marked unavailable."""
    scenario = Scenario()
    url = fault_server.url(scenario) + "/v1"
    a = RemoteInferenceEngine(ModelParams(model_name="m"), name="a",
                              remote_params=RemoteParams(api_url=url))
    b = RemoteVLLMInferenceEngine(ModelParams(model_name="m"), name="b",
                                  remote_params=RemoteParams(api_url=url))
    chain = FallbackChain("c", [a, b])
    top_k = InferenceConfig(generation=GenerationParams(top_k=5))
    [first] = await chain.agenerate(_convs(1), top_k)
    [plain] = await chain.agenerate(_convs(1))
    await a.aclose()
    await b.aclose()
    assert isinstance(first, Completion) and first.served_by == "b"
    assert first.attempts[0].error == "UnsupportedParameterError"
    assert "top_k" in (first.attempts[0].message or "")
    assert isinstance(plain, Completion) and plain.served_by == "a"
    assert chain.unavailable == {} and chain.breaker(a).failures == 0
    assert chain.plan() == {"a": None, "b": None}


async def test_a_request_no_engine_can_honour_is_that_request_error() -> None:
    chain = FallbackChain("c", [FakeEngine("a", supported=frozenset({"max_new_tokens"})),
                                FakeEngine("b", supported=frozenset({"max_new_tokens"}))])
    [outcome] = await chain.agenerate(_convs(1), InferenceConfig(
        generation=GenerationParams(top_k=5)))
    assert isinstance(outcome, UnsupportedParameterError) and outcome.param == "top_k"
    [ok] = await chain.agenerate(_convs(1))
    assert isinstance(ok, Completion) and ok.served_by == "a"


async def test_a_failed_load_retires_the_engine_for_the_chain() -> None:
    class BrokenLoad(FakeEngine):
        def _load(self) -> None:
            raise EngineUnavailableError("weights are corrupt", engine=self.name)

    broken = BrokenLoad("broken")
    chain = FallbackChain("c", [broken, FakeEngine("b")])
    for _ in range(2):
        [out] = await chain.agenerate(_convs(1))
        assert isinstance(out, Completion) and out.served_by == "b"
    assert chain.unavailable == {"broken": "broken: weights are corrupt"}
    assert chain.plan()["broken"] == "broken: weights are corrupt"
