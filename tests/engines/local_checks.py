"""Behaviour every local engine must show on the packaged model; each test module calls these.

    await answers_capital_of_france(engine)
"""

from __future__ import annotations

import os
from pathlib import Path

from inferline.core.configs import GenerationParams, InferenceConfig
from inferline.core.types import Conversation
from inferline.engines.base import BaseInferenceEngine

#: "The capital of France is Paris" wins its first token by ~1.9 logits here, in transformers
#: fp32 and in llama.cpp with or without flash attention: safe from CPU rounding. (With
#: "You are a helpful assistant." alone the margin is ~0.1, a coin flip: see README.)
SYSTEM = "You are a helpful assistant. Answer in one word."
CAPITAL = Conversation.from_prompt("What is the capital of France?", system=SYSTEM)
TOPICS = ["cats", "the sun", "elephants", "the ocean", "rivers", "Paris", "music", "winter",
          "bicycles", "the moon", "volcanoes", "trees", "rain", "books", "horses", "mountains"]


def config(**generation: object) -> InferenceConfig:
    return InferenceConfig(generation=GenerationParams(**generation))


async def answer(engine: BaseInferenceEngine, conv: Conversation = CAPITAL, **gen: object) -> str:
    [out] = await engine.ainfer([conv], config(**gen))
    return out.last_message().text


async def answers_capital_of_france(engine: BaseInferenceEngine) -> str:
    """Greedy, twice: "Paris", the same both times, with usage and finish_reason."""
    [out] = await engine.ainfer([CAPITAL], config(max_new_tokens=32))
    text = out.last_message().text
    assert "Paris" in text, text
    assert out.metadata["finish_reason"] == "stop"
    usage = out.metadata["usage"]
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] < 32
    assert await answer(engine, max_new_tokens=32) == text  # greedy is deterministic
    return text


async def batch_of_16_in_order(engine: BaseInferenceEngine, **gen: object) -> None:
    """16 different prompts -> 16 answers, each about its own topic, usage filled in."""
    convs = [Conversation.from_prompt(f"Write one sentence about {t}.", system=SYSTEM)
             for t in TOPICS]
    outs = await engine.ainfer(convs, config(max_new_tokens=24, **gen))
    assert len(outs) == 16
    assert [o.messages[:-1] for o in outs] == [c.messages for c in convs]
    texts = [o.last_message().text.lower() for o in outs]
    on_topic = [_stem(t) in text for t, text in zip(TOPICS, texts, strict=True)]
    assert sum(on_topic) >= 13, texts  # shuffled answers would score ~1
    for out in outs:
        assert out.metadata["usage"]["prompt_tokens"] > 0
        assert 0 < out.metadata["usage"]["completion_tokens"] <= 24
        assert out.metadata["finish_reason"] in ("stop", "length")


def _stem(topic: str) -> str:
    word = topic.split()[-1].lower()
    return word[:-1] if word.endswith("s") and len(word) > 4 else word


async def stops_at_stop_string(engine: BaseInferenceEngine) -> None:
    [out] = await engine.ainfer([CAPITAL], config(max_new_tokens=32, stop_strings=[" Paris"]))
    assert out.last_message().text == "The capital of France is"
    assert out.metadata["finish_reason"] == "stop"


async def seed_repeats_sampling(engine: BaseInferenceEngine) -> None:
    conv = Conversation.from_prompt("Tell me a story about a dragon.")
    first = await answer(engine, conv, max_new_tokens=16, temperature=1.0, seed=7)
    assert await answer(engine, conv, max_new_tokens=16, temperature=1.0, seed=7) == first
    others = {await answer(engine, conv, max_new_tokens=16, temperature=1.0, seed=s)
              for s in (1, 2, 3)}
    assert others - {first}, "different seeds should give some different samples"


async def stream_joins_to_text(engine: BaseInferenceEngine) -> None:
    conv = Conversation.from_prompt("Tell me about Paris.", system=SYSTEM)
    cfg = config(max_new_tokens=40)
    chunks = [c async for c in engine.astream(conv, cfg)]
    [whole] = await engine.ainfer([conv], cfg)
    assert len(chunks) >= 5
    assert "".join(c.text for c in chunks) == whole.last_message().text
    assert chunks[-1].finish_reason == whole.metadata["finish_reason"] == "length"
    assert chunks[-1].usage.as_dict() == whole.metadata["usage"]


async def bad_logit_bias_fails_the_request_not_the_engine(engine: BaseInferenceEngine) -> None:
    """A word-keyed logit_bias fails that request (the chain's next engine serves it); the
    engine keeps serving plain requests, with no strike against it."""
    from inferline.engines.base import Completion
    from inferline.engines.testing import FakeEngine
    from inferline.pipelines.fallback import FallbackChain

    chain = FallbackChain("c", [engine, FakeEngine("backup")])
    [biased] = await chain.agenerate([CAPITAL], config(logit_bias={"Paris": 5.0}))
    assert chain.breaker(engine).failures == 0
    [plain] = await chain.agenerate([CAPITAL], config(max_new_tokens=16))
    assert isinstance(biased, Completion) and biased.served_by == "backup"
    assert biased.attempts[0].error == "UnsupportedRequestError"
    assert isinstance(plain, Completion) and plain.served_by == engine.name
    assert "Paris" in plain.text and chain.unavailable == {}


def child_processes() -> list[str]:
    """Live (not zombie) child processes of this one, by command line."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.append(cmd.strip())
    return found
