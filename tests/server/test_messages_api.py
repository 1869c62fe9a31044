"""Anthropic's Messages API on the gateway, through the official ``anthropic`` SDK: llama.cpp
for real answers, the fault server's echo engine where a test needs exact text or faults."""

from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import pytest
from structlog.testing import capture_logs

from inferline.settings.model import LogSettings
from tests.fixtures.fault_server import Scenario
from tests.fixtures.gateway import free_port, remote

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]


def client(gw, api_key: str = "unused", **kwargs) -> anthropic.AsyncAnthropic:
    """An SDK client that does not retry, so each call is one HTTP request."""
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=api_key, max_retries=0,
                                    timeout=60, **kwargs)


@pytest.fixture
async def gw(gateway, llama_engine):
    """A chain whose first engine is down (nothing listens) and whose second is llama.cpp."""
    dead = remote(f"http://127.0.0.1:{free_port()}/v1")
    return await gateway({"dead": dead, "llama": llama_engine},
                         chains={"default": ["dead", "llama"]})


async def test_message_falls_back_and_says_who_served(gw) -> None:
    raw = await client(gw).messages.with_raw_response.create(
        model="default", max_tokens=8, messages=QUESTION, extra_body={"temperature": 0})
    reply = await raw.parse()
    assert raw.headers["x-inferline-engine"] == "llama"
    assert reply.type == "message" and reply.role == "assistant" and reply.model == "default"
    assert reply.content[0].type == "text" and reply.content[0].text.strip()
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert 0 < reply.usage.output_tokens <= 8 and reply.usage.input_tokens > 0
    served = reply.model_extra["inferline"]
    assert served["served_by"] == "llama"
    assert [a["engine"] for a in served["attempts"]] == ["dead", "llama"]
    assert served["attempts"][0]["error"] and served["attempts"][1]["error"] is None


async def test_stream_events_join_to_the_same_answer(gw) -> None:
    sdk = client(gw)
    ask = {"model": "default", "max_tokens": 12, "messages": QUESTION,
           "extra_body": {"temperature": 0}}
    plain = await sdk.messages.create(**ask)
    raw = await sdk.messages.with_raw_response.create(**ask, stream=True)
    events = [event async for event in await raw.parse()]
    kinds = [e.type for e in events]
    assert raw.headers["x-inferline-engine"] == "llama"
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"} and len(kinds[2:-3]) > 1
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == plain.content[0].text
    final = events[-2]
    assert final.delta.stop_reason == plain.stop_reason
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.model_extra["inferline"]["served_by"] == "llama"
    # the SDK's stream helper assembles the same message from those events
    async with sdk.messages.stream(**ask) as stream:
        assembled = await stream.get_final_message()
    assert assembled.content[0].text == plain.content[0].text
    assert assembled.usage.input_tokens == plain.usage.input_tokens


async def test_max_tokens_ends_with_stop_reason_max_tokens(gw) -> None:
    sdk = client(gw)
    reply = await sdk.messages.create(model="llama", max_tokens=3, messages=COUNT)
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 3
    async with sdk.messages.stream(model="llama", max_tokens=3, messages=COUNT) as stream:
        streamed = await stream.get_final_message()
    assert streamed.stop_reason == "max_tokens"


async def test_stop_sequences_cut_the_answer(gw) -> None:
    sdk = client(gw)
    ask = {"model": "llama", "max_tokens": 16, "messages": COUNT,
           "extra_body": {"temperature": 0}}
    full = (await sdk.messages.create(**ask)).content[0].text
    assert "5" in full  # else the stop sequence below would prove nothing
    cut = await sdk.messages.create(**ask, stop_sequences=["5"])
    assert cut.content[0].text == full[:full.index("5")]
    # the engines do not say which of "a stop sequence" or "the model" ended the text
    assert cut.stop_reason == "end_turn" and cut.stop_sequence is None


async def test_system_and_generation_fields_reach_the_engine(gateway, upstream) -> None:
    up = await upstream()
    gw = await gateway({"echo": remote(up.url)})
    reply = await client(gw).messages.create(
        model="echo", max_tokens=20, metadata={"user_id": "ignored"},
        system=[{"type": "text", "text": "Be brief."},
                {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hello"},
                  {"role": "user", "content": [{"type": "text", "text": "there"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]},
                  {"role": "user", "content": [{"type": "text", "text": "Say"},
                                               {"type": "text", "text": "this"}]}],
        stop_sequences=["\n\n"], extra_body={"temperature": 0.5, "top_p": 0.9})
    sent = up.scenario.requests[-1]["body"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][0]["content"] == "Be brief.\n\nBe kind."
    assert [p["text"] for p in sent["messages"][1]["content"]] == ["Hello", "there"]  # one turn
    assert sent["messages"][2]["content"] == "Hi!"
    assert [p["text"] for p in sent["messages"][3]["content"]] == ["Say", "this"]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["stop"]) == (
        20, 0.5, 0.9, ["\n\n"])
    assert reply.content[0].text == "echo: Say this" and reply.stop_reason == "end_turn"


async def test_image_blocks_reach_the_engine_as_image_urls(gateway, upstream) -> None:
    up = await upstream()
    gw = await gateway({"echo": remote(up.url)})
    await client(gw).messages.create(model="echo", max_tokens=5, messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
            {"type": "text", "text": "What is this?"}]}])
    parts = up.scenario.requests[-1]["body"]["messages"][0]["content"]
    assert [p.get("image_url", {}).get("url") for p in parts[:2]] == [
        "data:image/png;base64,iVBORw0KGgo=", "https://x.test/a.png"]


async def test_unknown_model_is_not_found_in_anthropic_shape(gateway, upstream) -> None:
    gw = await gateway({"echo": remote((await upstream()).url)}, chains={"default": ["echo"]})
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client(gw).messages.create(model="defualt", max_tokens=5, messages=QUESTION)
    assert caught.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": "model 'defualt' not found; did you mean "
                                              "'default'?"}}


async def test_keys_as_x_api_key_or_bearer_and_a_bad_one(gateway, upstream) -> None:
    gw = await gateway({"echo": remote((await upstream()).url)}, keys=["sk-good"])
    ask = {"model": "echo", "max_tokens": 5, "messages": QUESTION}
    assert (await client(gw, "sk-good").messages.create(**ask)).content[0].text
    bearer = anthropic.AsyncAnthropic(base_url=gw.url, auth_token="sk-good", max_retries=0)
    assert (await bearer.messages.create(**ask)).content[0].text
    for key in ("sk-bad", "sk-goo"):
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client(gw, key).messages.create(**ask)
        assert caught.value.body["error"]["type"] == "authentication_error"
        assert "sk-" not in str(caught.value)  # the key is never echoed


@pytest.mark.parametrize(("extra", "named"), [
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]},  # a server tool
     "'tools.0.input_schema'"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "'thinking'"),
    ({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "data": "18C"}}]}]}, "'document'"),
    ({"max_tokens": 0}, "'max_tokens'"),
    ({"temperature": 1.5}, "'temperature'"),
])
async def test_unsupported_or_invalid_field_is_a_400_naming_it(gateway, upstream, extra,
                                                                named) -> None:
    up = await upstream()
    gw = await gateway({"echo": remote(up.url)})
    ask = {"model": "echo", "max_tokens": 5, "messages": QUESTION}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client(gw).messages.create(**{**ask, "extra_body": extra})
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert named in caught.value.body["error"]["message"]
    assert up.scenario.requests == []  # refused before any engine was called


async def test_chain_falls_back_plain_and_streamed(gateway, upstream) -> None:
    down = await upstream(Scenario(mode="status", status=503, faults=-1))
    backup = await upstream()
    gw = await gateway({"down": remote(down.url), "backup": remote(backup.url)},
                       chains={"default": ["down", "backup"]})
    sdk = client(gw)
    raw = await sdk.messages.with_raw_response.create(model="default", max_tokens=9,
                                                      messages=QUESTION)
    reply = await raw.parse()
    assert raw.headers["x-inferline-engine"] == "backup"
    assert reply.content[0].text == "echo: What is the capital of France?"
    assert [a["engine"] for a in reply.model_extra["inferline"]["attempts"]] == ["down",
                                                                                 "backup"]
    async with sdk.messages.stream(model="default", max_tokens=9, messages=QUESTION) as stream:
        assert stream.response.headers["x-inferline-engine"] == "backup"
        text = "".join([piece async for piece in stream.text_stream])
    assert text == reply.content[0].text
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/metrics") as resp:
        metrics = await resp.text()
    assert 'inferline_fallbacks_total{failed_engine="down",model="default"} 2.0' in metrics


async def test_failure_mid_stream_is_an_error_event(gateway, upstream) -> None:
    broken, healthy = await upstream(Scenario(mode="stream_error", faults=-1)), await upstream()
    gw = await gateway({"broken": remote(broken.url), "healthy": remote(healthy.url)})
    stream = await client(gw).messages.create(model="broken", max_tokens=20, stream=True,
                                              messages=QUESTION)
    received = []
    with pytest.raises(anthropic.APIStatusError, match="mid-stream") as caught:
        async for event in stream:
            if event.type == "content_block_delta":
                received.append(event.delta.text)
    assert "".join(received) == "half an"  # what was sent before the failure stays sent
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "overloaded_error"
    reply = await client(gw).messages.create(model="healthy", max_tokens=5, messages=QUESTION)
    assert reply.content[0].text == "echo: What is the capital"  # the gateway itself is fine


async def test_failure_before_the_stream_starts_is_a_plain_error(gateway) -> None:
    gw = await gateway({"dead": remote(f"http://127.0.0.1:{free_port()}/v1")})
    with pytest.raises(anthropic.InternalServerError) as caught:
        await client(gw).messages.create(model="dead", max_tokens=5, stream=True,
                                         messages=QUESTION)
    assert caught.value.status_code == 503
    assert caught.value.body["error"]["type"] == "overloaded_error"


async def test_messages_count_against_max_concurrency(gateway, upstream) -> None:
    slow = await upstream(Scenario(delay_s=1.0))
    gw = await gateway({"slow": remote(slow.url)}, max_concurrency=1)
    sdk = client(gw)
    ask = {"model": "slow", "max_tokens": 5, "messages": QUESTION}
    busy = asyncio.create_task(sdk.messages.create(**ask))
    while slow.scenario.in_flight < 1:
        await asyncio.sleep(0.01)
    with pytest.raises(anthropic.RateLimitError) as caught:
        await sdk.messages.create(**ask)
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert caught.value.response.headers["retry-after"] == "1"
    assert (await busy).content[0].text


@pytest.mark.parametrize("log_prompts", [False, True])
async def test_access_log_names_the_engine_and_prompts_only_when_enabled(
        gateway, upstream, log_prompts: bool) -> None:
    gw = await gateway({"echo": remote((await upstream()).url)},
                       log=LogSettings(log_prompts=log_prompts))
    with capture_logs() as logs:
        await client(gw).messages.create(model="echo", max_tokens=8, system="sys-8c1e",
                                         messages=[{"role": "user", "content": "hi-7f3a"}])
    [access] = [e for e in logs if e["event"] == "http_request"]
    assert (access["status"], access["path"], access["served_by"]) == (200, "/v1/messages",
                                                                        "echo")
    assert ("hi-7f3a" in repr(logs), "sys-8c1e" in repr(logs)) == (log_prompts, log_prompts)
