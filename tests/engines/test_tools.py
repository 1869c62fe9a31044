"""Tool calling in the engine API: messages that carry calls and results, the OpenAI and
Anthropic wire formats both ways (plain and streamed), and engines that cannot call tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from inferline.core.configs import (
    GenerationParams,
    InferenceConfig,
    InferenceEngineType,
    ModelParams,
    RemoteParams,
    ToolSpec,
)
from inferline.core.types import (
    Conversation,
    Message,
    Role,
    ToolCall,
    read_jsonl,
    write_jsonl,
)
from inferline.engines import engine_class
from inferline.engines.anthropic import AnthropicInferenceEngine
from inferline.engines.base import Completion, StreamChunk
from inferline.engines.local import chat_messages
from inferline.engines.openai_compat import RemoteInferenceEngine
from inferline.engines.testing import FakeEngine
from inferline.errors import UnsupportedParameterError, UnsupportedRequestError
from inferline.pipelines.fallback import FallbackChain
from tests.fixtures.fault_protocols import PREAMBLE
from tests.fixtures.fault_server import FaultServer, Scenario

WEATHER = ToolSpec(name="get_weather", description="The weather in a city.",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]})
CLOCK = ToolSpec(name="get_time")
TOOLS = InferenceConfig(generation=GenerationParams(tools=[CLOCK, WEATHER],
                                                    tool_choice="get_weather"))
ASK = Conversation.from_prompt("What is the weather in Paris?")
CALLED = ASK.append(Message(role=Role.ASSISTANT, tool_calls=[
    ToolCall(id="call_9", name="get_weather", arguments='{"city": "Paris"}')]))
ANSWERED = CALLED.append(Message(role=Role.TOOL, tool_call_id="call_9", content="Sunny, 21 C"))


def openai_engine(url: str) -> RemoteInferenceEngine:
    return RemoteInferenceEngine(ModelParams(model_name="m"),
                                 remote_params=RemoteParams(api_url=url, max_retries=0))


def anthropic_engine(url: str) -> AnthropicInferenceEngine:
    return AnthropicInferenceEngine(ModelParams(model_name="claude-test"), remote_params=(
        RemoteParams(api_url=url, api_key_env_varname=None, max_retries=0)))


def joined(chunks: list[StreamChunk]) -> tuple[list[tuple[int, str | None, str | None]], str]:
    """The streamed calls' (index, id, name) starts, and call 0's arguments joined."""
    deltas = [d for c in chunks for d in c.tool_calls or ()]
    starts = [(d.index, d.id, d.name) for d in deltas if d.id]
    return starts, "".join(d.arguments for d in deltas if d.index == 0)


# -- the types ---------------------------------------------------------------------------

def test_tool_turns_round_trip_through_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [ANSWERED])
    [back] = read_jsonl(path)
    assert back == ANSWERED
    line = json.loads(path.read_text())
    assert line["messages"][1]["tool_calls"] == [
        {"id": "call_9", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert line["messages"][2] == {"role": "tool", "content": "Sunny, 21 C",
                                   "tool_call_id": "call_9"}
    assert "tool_calls" not in line["messages"][0]  # absent, not null, on plain turns


def test_tool_choice_must_name_an_offered_tool() -> None:
    with pytest.raises(ValidationError, match="names no tool"):
        GenerationParams(tools=[WEATHER], tool_choice="get_time")
    assert GenerationParams(tools=[WEATHER], tool_choice="required").tool_choice == "required"


# -- OpenAI-compatible engines -------------------------------------------------------------

async def test_openai_engine_sends_tools_and_parses_the_call(fault_server: FaultServer) -> None:
    scenario = Scenario(tool_input={"city": "Paris"})
    async with openai_engine(fault_server.url(scenario)) as engine:
        [done] = await engine.agenerate([ASK], TOOLS)
    assert isinstance(done, Completion)
    assert done.finish_reason == "tool_calls" and done.text == ""
    assert [(c.name, json.loads(c.arguments)) for c in done.tool_calls] == [
        ("get_weather", {"city": "Paris"})]
    body = scenario.requests[0]["body"]
    assert body["tools"][1] == {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": WEATHER.parameters}}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


async def test_openai_engine_streams_tool_call_deltas(fault_server: FaultServer) -> None:
    scenario = Scenario(tool_input={"city": "Paris"})
    async with openai_engine(fault_server.url(scenario)) as engine:
        chunks = [c async for c in engine.astream(ASK, TOOLS)]
    starts, arguments = joined(chunks)
    assert starts == [(0, "call_1", "get_weather")]
    assert json.loads(arguments) == {"city": "Paris"}
    assert len([c for c in chunks if c.tool_calls]) == 3  # the start, two argument pieces
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].usage.completion_tokens == 7


async def test_openai_engine_sends_calls_and_results_back(fault_server: FaultServer) -> None:
    scenario = Scenario(tool_input={"city": "Paris"})
    async with openai_engine(fault_server.url(scenario)) as engine:
        [out] = await engine.ainfer([ANSWERED], TOOLS)
    assert out.last_message().text == "echo: Sunny, 21 C"
    assert out.metadata["finish_reason"] == "stop"
    sent = scenario.requests[0]["body"]["messages"]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_9", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    assert sent[2] == {"role": "tool", "content": "Sunny, 21 C", "tool_call_id": "call_9"}


async def test_file_mode_writes_the_calls(fault_server: FaultServer, tmp_path: Path) -> None:
    rows, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(rows, [ASK, ANSWERED])
    engine = openai_engine(fault_server.url(Scenario(tool_input={"city": "Paris"})))
    config = TOOLS.model_copy(update={"input_path": str(rows), "output_path": str(out)})
    engine.infer(inference_config=config)
    engine.close()
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert first["messages"][-1]["tool_calls"][0]["name"] == "get_weather"
    assert first["metadata"]["finish_reason"] == "tool_calls"
    assert second["messages"][-1] == {"role": "assistant", "content": "echo: Sunny, 21 C"}
    again = Message.model_validate(first["messages"][-1])  # reads back as a message
    assert again.tool_calls and again.tool_calls[0].arguments == '{"city": "Paris"}'


# -- Anthropic -------------------------------------------------------------------------------

async def test_anthropic_engine_translates_tools_and_tool_use(fault_server: FaultServer) -> None:
    scenario = Scenario(tool_input={"city": "Paris"})
    async with anthropic_engine(fault_server.url(scenario)) as engine:
        [done] = await engine.agenerate([ASK], TOOLS)
    assert isinstance(done, Completion)
    assert done.finish_reason == "tool_calls" and done.text == PREAMBLE
    assert [(c.id, c.name, json.loads(c.arguments)) for c in done.tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Paris"})]
    body = scenario.requests[0]["body"]
    assert body["tools"] == [
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        {"name": "get_weather", "description": "The weather in a city.",
         "input_schema": WEATHER.parameters}]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}


@pytest.mark.parametrize(("choice", "sent"), [("required", {"type": "any"}),
                                              ("auto", {"type": "auto"})])
async def test_anthropic_tool_choice_modes(fault_server: FaultServer, choice: str,
                                           sent: dict[str, str]) -> None:
    scenario = Scenario(tool_input={})
    config = InferenceConfig(generation=GenerationParams(tools=[WEATHER], tool_choice=choice))
    async with anthropic_engine(fault_server.url(scenario)) as engine:
        await engine.agenerate([ASK], config)
    assert scenario.requests[0]["body"]["tool_choice"] == sent


async def test_anthropic_engine_streams_tool_use(fault_server: FaultServer) -> None:
    scenario = Scenario(tool_input={"city": "Paris"})
    async with anthropic_engine(fault_server.url(scenario)) as engine:
        chunks = [c async for c in engine.astream(ASK, TOOLS)]
    starts, arguments = joined(chunks)
    assert starts == [(0, "toolu_1", "get_weather")]  # block 1, the first call: index 0
    assert json.loads(arguments) == {"city": "Paris"}
    assert "".join(c.text for c in chunks) == PREAMBLE
    assert chunks[-1].finish_reason == "tool_calls"


async def test_anthropic_engine_sends_tool_use_and_tool_result(fault_server: FaultServer) -> None:
    scenario = Scenario(tool_input={"city": "Paris"})
    async with anthropic_engine(fault_server.url(scenario)) as engine:
        [out] = await engine.ainfer([ANSWERED], TOOLS)
    assert out.last_message().text == "echo: Sunny, 21 C"
    sent = scenario.requests[0]["body"]["messages"]
    assert sent[1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Paris"}}]}
    assert sent[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_9", "content": "Sunny, 21 C"}]}


async def test_anthropic_refuses_arguments_that_are_not_a_json_object(
        fault_server: FaultServer) -> None:
    scenario = Scenario()
    garbled = ASK.append(Message(role=Role.ASSISTANT, tool_calls=[
        ToolCall(id="call_9", name="get_weather", arguments='"Paris"')]))
    async with anthropic_engine(fault_server.url(scenario)) as engine:
        [outcome] = await engine.agenerate([garbled.append(ANSWERED.messages[-1])])
    assert isinstance(outcome, UnsupportedRequestError)  # a chain moves on, engine kept
    assert "not a JSON object" in str(outcome) and scenario.requests == []


# -- engines that cannot call tools ------------------------------------------------------------

def test_local_engines_cannot_call_tools(smollm_gguf: Path) -> None:
    from inferline.engines.llamacpp import LlamaCppInferenceEngine

    llama = LlamaCppInferenceEngine(ModelParams(model_name=str(smollm_gguf)), name="llama")
    assert not llama.can_call_tools and "tools" not in llama.get_supported_params()
    assert {"tools", "tool_choice"} <= openai_engine("http://x/v1").get_supported_params()
    [outcome] = llama.infer_partial([ASK], TOOLS)
    assert isinstance(outcome.error, UnsupportedParameterError)
    assert "generation.tools" in str(outcome.error) and "get_weather" in str(outcome.error)
    assert not llama._loaded  # refused before any weights were loaded
    with pytest.raises(UnsupportedRequestError, match="cannot call tools"):
        chat_messages(ANSWERED, engine="llama")


async def test_chain_skips_an_engine_that_cannot_call_tools(fault_server: FaultServer) -> None:
    local = FakeEngine("local")  # like the in-process engines: can_call_tools is False
    remote = openai_engine(fault_server.url(Scenario(tool_input={"city": "Paris"})))
    chain = FallbackChain("default", [local, remote])
    async with remote:
        [called] = await chain.agenerate([ASK], TOOLS)
        [plain] = await chain.agenerate([ASK])
    assert isinstance(called, Completion) and called.served_by == remote.name
    assert [(a.engine, a.error) for a in called.attempts] == [
        ("local", "UnsupportedParameterError"), (remote.name, None)]
    assert isinstance(plain, Completion) and plain.served_by == "local"  # still in service
    assert chain.unavailable == {} and chain.breaker(local).state == "closed"


def test_the_remote_engines_call_tools_and_the_local_ones_do_not() -> None:
    classes = {t.value: engine_class(t) for t in InferenceEngineType}
    assert {name for name, cls in classes.items() if cls.can_call_tools} == {
        "REMOTE", "REMOTE_VLLM", "OPENAI", "ANTHROPIC", "GOOGLE_GEMINI", "GOOGLE_VERTEX",
        "PARASAIL"}
    assert all(cls.is_local for cls in classes.values() if not cls.can_call_tools)


async def test_cache_keeps_tool_calls_and_keys_on_tool_results(fault_server: FaultServer,
                                                               tmp_path: Path) -> None:
    from inferline.engines.cache import CachedEngine, DiskStore
    from inferline.settings.model import CacheSettings

    scenario = Scenario(tool_input={"city": "Paris"})
    engine = openai_engine(fault_server.url(scenario) + "/v1")
    async with CachedEngine(engine, DiskStore(tmp_path / "c"), CacheSettings()) as cache:
        [first] = await cache.agenerate([ASK], TOOLS)
        [hit] = await cache.agenerate([ASK], TOOLS)
        assert hit.cache == "hit" and hit.finish_reason == "tool_calls"  # type: ignore[union-attr]
        assert hit.tool_calls == first.tool_calls != []  # type: ignore[union-attr]
        [chunk] = [c async for c in cache.astream(ASK, TOOLS)]
        assert [d.name for d in chunk.tool_calls or ()] == ["get_weather"]
        lyon = ASK.append(Message(role=Role.ASSISTANT, tool_calls=[
            ToolCall(id="call_9", name="get_weather", arguments='{"city": "Lyon"}')])).append(
            Message(role=Role.TOOL, tool_call_id="call_9", content="Sunny, 21 C"))
        for conversation in (ANSWERED, lyon, ANSWERED):
            await cache.agenerate([conversation], TOOLS)
    # the same texts, but other tool calls: another request (and the repeat, a hit)
    assert len(scenario.requests) == 3
