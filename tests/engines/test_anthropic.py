"""AnthropicInferenceEngine against vLLM's /v1/messages and the fault server."""

from __future__ import annotations

import pytest

from inferline.core.configs import GenerationParams, ModelParams, RemoteParams
from inferline.core.types import Conversation, Message, Role
from inferline.engines.anthropic import AnthropicInferenceEngine
from inferline.errors import (
    EngineUnavailableError,
    FatalEngineError,
    RetryableEngineError,
)
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.vllm_server import VLLMServer

PARIS = Conversation.from_prompt("What is the capital of France?", system="Answer in one word.")
FAST = {"retry_backoff_base": 0.01, "retry_backoff_max": 0.2}


def make(url: str, *, max_new_tokens: int = 16, **remote: object) -> AnthropicInferenceEngine:
    return AnthropicInferenceEngine(
        ModelParams(model_name="claude-test"),
        generation_params=GenerationParams(max_new_tokens=max_new_tokens),
        remote_params=RemoteParams(api_url=url, **{"api_key_env_varname": None, **FAST, **remote}))


@pytest.mark.slow
async def test_paris_over_messages_api_on_vllm(vllm_server: VLLMServer) -> None:
    engine = AnthropicInferenceEngine(ModelParams(model_name=vllm_server.model),
                                      generation_params=GenerationParams(max_new_tokens=16),
                                      remote_params=RemoteParams(api_url=vllm_server.base_url,
                                                                 api_key_env_varname=None))
    async with engine:
        [out] = await engine.ainfer([PARIS])
        chunks = [c async for c in engine.astream(PARIS)]
    assert "Paris" in out.last_message().text and out.metadata["finish_reason"] == "stop"
    assert out.metadata["usage"]["prompt_tokens"] > 0
    assert len(chunks) > 2 and "Paris" in "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.completion_tokens > 0


async def test_request_shape_headers_and_mapping(fault_server: FaultServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "ak-123")
    scenario = Scenario()
    conv = Conversation(messages=[
        Message(role=Role.SYSTEM, content="Be brief."), Message(role=Role.USER, content="hi"),
        Message(role=Role.ASSISTANT, content="hello"),
        Message(role=Role.SYSTEM, content="No emoji."),
        Message(role=Role.USER, content="one two three")])
    engine = AnthropicInferenceEngine(ModelParams(model_name="claude-test"),
                                      generation_params=GenerationParams(max_new_tokens=2, top_k=4),
                                      remote_params=RemoteParams(api_url=fault_server.url(scenario)))
    async with engine:
        [out] = await engine.ainfer([conv])
    request = scenario.requests[0]
    assert request["path"].endswith("/v1/messages")
    assert request["headers"]["x-api-key"] == "ak-123"
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"]["system"] == "Be brief.\n\nNo emoji."
    assert [m["role"] for m in request["body"]["messages"]] == ["user", "assistant", "user"]
    assert request["body"]["top_k"] == 4 and request["body"]["max_tokens"] == 2
    assert out.last_message().text == "echo: one"
    assert out.metadata["finish_reason"] == "length"  # stop_reason max_tokens
    assert out.metadata["usage"]["completion_tokens"] == 2


async def test_stream_usage_and_stop_reason(fault_server: FaultServer) -> None:
    async with make(fault_server.url(Scenario())) as engine:
        chunks = [c async for c in engine.astream(Conversation.from_prompt("a b"))]
    assert "".join(c.text for c in chunks) == "echo: a b"
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens == 3


async def test_error_event_in_stream_raises(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="stream_error", faults=-1)
    got = []
    async with make(fault_server.url(scenario)) as engine:
        with pytest.raises(RetryableEngineError, match="injected overload") as info:
            async for chunk in engine.astream(Conversation.from_prompt("x")):
                got.append(chunk.text)
    assert info.value.status == 529 and "".join(got) == "half an"


async def test_overloaded_529_is_retried_then_served(fault_server: FaultServer) -> None:
    scenario = Scenario(mode="status", status=529, faults=2)
    async with make(fault_server.url(scenario)) as engine:
        [out] = await engine.ainfer([Conversation.from_prompt("x")])
    assert out.last_message().text == "echo: x" and len(scenario.requests) == 3


async def test_bad_request_is_fatal(fault_server: FaultServer) -> None:
    async with make(fault_server.url(Scenario(fatal_marker="!"))) as engine:
        with pytest.raises(FatalEngineError, match="bad prompt"):
            await engine.ainfer([Conversation.from_prompt("!")])


def test_default_url_and_key_variable() -> None:
    engine = AnthropicInferenceEngine(ModelParams(model_name="claude-3-5-sonnet-20240620"))
    assert engine.api_url == "https://api.anthropic.com/v1/messages"
    with pytest.raises(EngineUnavailableError, match="ANTHROPIC_API_KEY"):
        engine.load()
