"""Chat completions through the gateway with the official OpenAI SDK, on llama.cpp."""

from __future__ import annotations

import pytest

from tests.fixtures.gateway import free_port, remote

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
async def gw(gateway, llama_engine):
    """A chain whose first engine is down (nothing listens) and whose second is llama.cpp."""
    dead = remote(f"http://127.0.0.1:{free_port()}/v1")
    return await gateway({"dead": dead, "llama": llama_engine},
                         chains={"default": ["dead", "llama"]})


async def test_chat_falls_back_and_says_who_served(gw) -> None:
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, max_tokens=8, temperature=0)
    reply = raw.parse()
    assert raw.headers["x-inferline-engine"] == "llama"
    assert reply.choices[0].message.content.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0
    served = reply.model_extra["inferline"]
    assert served["served_by"] == "llama"
    assert [a["engine"] for a in served["attempts"]] == ["dead", "llama"]
    assert served["attempts"][0]["error"] and served["attempts"][1]["error"] is None


async def test_stream_chunks_join_to_the_same_answer(gw) -> None:
    client = gw.client()
    plain = await client.chat.completions.create(model="default", messages=MESSAGES,
                                                 max_tokens=12, temperature=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in raw.parse()]  # the SDK stops at data: [DONE]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert raw.headers["x-inferline-engine"] == "llama"
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert text == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.model_extra["inferline"]["served_by"] for c in finals] == ["llama"]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


async def test_engine_by_name_and_generation_fields(gw) -> None:
    reply = await gw.client().chat.completions.create(
        model="llama", messages=MESSAGES, max_completion_tokens=3, temperature=0, seed=1,
        top_p=0.9, stop=["\n\n"], frequency_penalty=0.1, user="ignored-field")
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3
    assert reply.model_extra["inferline"]["served_by"] == "llama"
