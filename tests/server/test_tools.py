"""Tool calling through the gateway with the official OpenAI SDK: the call, its result,
the final answer; streamed calls reassembled by the SDK; chains that skip engines which
cannot call tools; a real vLLM server with tool calling on."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from inferline.core.configs import ModelParams
from inferline.settings.model import EngineSettings
from tests.fixtures.fault_protocols import PREAMBLE
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.gateway import remote
from tests.fixtures.vllm_server import VLLMServer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCE = {"type": "function", "function": {"name": "get_weather"}}
RESULT = "Sunny, 21 C"


def claude(fault_server: FaultServer) -> EngineSettings:
    """The fault server speaking Anthropic's Messages API; it calls the tool it is offered."""
    url = fault_server.url(Scenario(tool_input={"city": "Paris"}))
    return EngineSettings(type="ANTHROPIC", model=ModelParams(model_name="claude-test"),
                          remote_params={"api_url": url, "api_key_env_varname": None,
                                         "max_retries": 0})


def answered(reply: Any) -> list[Any]:
    """The conversation after the assistant's call (as the SDK returned it) and its result."""
    call = reply.choices[0].message.tool_calls[0]
    return [*ASK, reply.choices[0].message,
            {"role": "tool", "tool_call_id": call.id, "content": RESULT}]


@pytest.fixture
async def fault_gw(gateway, fault_server: FaultServer):
    """Chains over one engine each: the fault server speaking Anthropic's and OpenAI's API."""
    oai = remote(f"{fault_server.url(Scenario(tool_input={'city': 'Paris'}))}/v1")
    return await gateway({"claude": claude(fault_server), "oai": oai},
                         chains={"anthropic": ["claude"], "openai": ["oai"]})


# -- remote engines behind the gateway (fault server) -------------------------------------

@pytest.mark.parametrize(("chain", "engine", "text"), [("anthropic", "claude", PREAMBLE),
                                                       ("openai", "oai", None)])
async def test_tool_round_trip_with_the_sdk(fault_gw, chain: str, engine: str,
                                            text: str | None) -> None:
    client = fault_gw.client()
    raw = await client.chat.completions.with_raw_response.create(
        model=chain, messages=ASK, tools=[WEATHER], tool_choice="auto", max_tokens=64)
    reply = raw.parse()
    assert raw.headers["x-inferline-engine"] == engine
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == text
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    final = await client.chat.completions.create(model=chain, messages=answered(reply),
                                                 tools=[WEATHER], max_tokens=64)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == f"echo: {RESULT}"
    assert final.choices[0].message.tool_calls is None


@pytest.mark.parametrize("chain", ["anthropic", "openai"])
async def test_streamed_tool_call_is_reassembled_by_the_sdk(fault_gw, chain: str) -> None:
    async with fault_gw.client().chat.completions.stream(
            model=chain, messages=ASK, tools=[WEATHER], tool_choice=FORCE,
            max_tokens=64) as stream:
        chunks = [event.chunk async for event in stream if event.type == "chunk"]
        final = await stream.get_final_completion()
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert len(deltas) >= 3 and deltas[0].id and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 for d in deltas) and all(d.id is None for d in deltas[1:])
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id == deltas[0].id
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_tool_requests_that_stay_unsupported_get_a_400_naming_the_field(fault_gw) -> None:
    client = fault_gw.client()
    bad = [({"messages": [*ASK, {"role": "tool", "content": RESULT}]}, "messages.tool_call_id"),
           ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice"),
           ({"functions": [WEATHER["function"]]}, "functions"),
           ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0.type")]
    for fields, param in bad:
        body = {"messages": ASK, **fields}
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="openai", max_tokens=8,
                                                 **body)  # type: ignore[call-overload]
        assert caught.value.body["param"] == param, fields  # type: ignore[index]


# -- a chain whose first engine cannot call tools ------------------------------------------

@pytest.mark.slow
async def test_chain_skips_llama_for_tools_and_keeps_it_for_the_rest(
        gateway, fault_server: FaultServer, llama_engine) -> None:
    gw = await gateway({"llama": llama_engine, "claude": claude(fault_server)},
                       chains={"default": ["llama", "claude"]})
    client = gw.client()
    reply = await client.chat.completions.create(model="default", messages=ASK,
                                                 tools=[WEATHER], max_tokens=16)
    served = reply.model_extra["inferline"]
    assert served["served_by"] == "claude" and reply.choices[0].finish_reason == "tool_calls"
    assert [(a["engine"], a["error"]) for a in served["attempts"]] == [
        ("llama", "UnsupportedParameterError"), ("claude", None)]
    async with client.chat.completions.stream(model="default", messages=ASK, tools=[WEATHER],
                                              max_tokens=16) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.name == "get_weather"

    plain = await client.chat.completions.create(model="default", messages=ASK, max_tokens=4)
    assert plain.model_extra["inferline"]["served_by"] == "llama"  # still in service
    with pytest.raises(openai.BadRequestError, match="tools"):  # no engine can: the request's
        await client.chat.completions.create(model="llama", messages=ASK, tools=[WEATHER],
                                             max_tokens=4)
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/ready") as resp:
        ready = await resp.json()
    assert ready["engines"]["llama"] == {"state": "loaded"}  # not retired, circuit closed


# -- a real vLLM server with tool calling on ----------------------------------------------

@pytest.fixture
async def vllm_gw(gateway, vllm_server: VLLMServer, fault_server: FaultServer):
    vllm = EngineSettings(type="REMOTE_VLLM", model=ModelParams(model_name=vllm_server.model),
                          remote_params={"api_url": vllm_server.base_url, "max_retries": 0})
    return await gateway({"vllm": vllm, "claude": claude(fault_server)},
                         chains={"default": ["vllm", "claude"]})


@pytest.mark.slow
async def test_vllm_calls_the_named_tool_and_answers_its_result(vllm_gw) -> None:
    client = vllm_gw.client()
    reply = await client.chat.completions.create(
        model="default", messages=ASK, tools=[WEATHER], tool_choice=FORCE, max_tokens=60,
        temperature=0)
    assert reply.model_extra["inferline"]["served_by"] == "vllm"
    assert reply.choices[0].finish_reason == "tool_calls"
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)  # guided by the schema: valid JSON
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)

    final = await client.chat.completions.create(model="default", messages=answered(reply),
                                                 tools=[WEATHER], max_tokens=24, temperature=0)
    assert final.model_extra["inferline"]["served_by"] == "vllm"
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.content.strip() and not final.choices[0].message.tool_calls


@pytest.mark.slow
async def test_vllm_streamed_tool_call_is_reassembled_by_the_sdk(vllm_gw) -> None:
    async with vllm_gw.client().chat.completions.stream(
            model="default", messages=ASK, tools=[WEATHER], tool_choice="required",
            max_tokens=60, temperature=0) as stream:
        chunks = [event.chunk async for event in stream if event.type == "chunk"]
        final = await stream.get_final_completion()
    [last] = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert last.model_extra["inferline"]["served_by"] == "vllm"
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}


# -- the same on /v1/messages, with the official Anthropic SDK -----------------------------

ANTHROPIC_TOOL = {"name": "get_weather", "description": "The weather in a city.",
                  "input_schema": WEATHER["function"]["parameters"]}


@pytest.mark.parametrize(("chain", "text"), [("openai", None), ("anthropic", PREAMBLE)])
async def test_messages_api_tool_round_trip_plain_and_streamed(fault_gw, chain: str,
                                                               text: str | None) -> None:
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=fault_gw.url, api_key="unused", max_retries=0)
    ask = {"model": chain, "max_tokens": 64, "tools": [ANTHROPIC_TOOL],
           "tool_choice": {"type": "tool", "name": "get_weather"},
           "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
    reply = await client.messages.create(**ask)
    assert reply.stop_reason == "tool_use"
    assert [b.text for b in reply.content if b.type == "text"] == ([text] if text else [])
    [use] = [b for b in reply.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"} and use.id

    async with client.messages.stream(**ask) as stream:
        streamed = await stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in streamed.content][-1] == (
        "tool_use", {"city": "Paris"})

    result = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": use.id, "content": RESULT}]}
    final = await client.messages.create(**{
        **ask, "tool_choice": {"type": "auto"},
        "messages": [*ask["messages"], {"role": "assistant", "content": reply.content}, result]})
    assert final.stop_reason == "end_turn"
    assert [b.text for b in final.content] == [f"echo: {RESULT}"]
