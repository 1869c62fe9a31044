"""The exact response cache: a key that sees every field of a request, hits that cost no
engine call, errors never stored, modes and per-request narrowing, disk and a real Redis,
a 3,000-row rerun through `inferline run`, the gateway's Cache-Control, and llama.cpp."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inferline.containers import running
from inferline.core.configs import (
    GenerationParams,
    GuidedDecodingParams,
    InferenceConfig,
    ModelParams,
    RemoteParams,
)
from inferline.core.types import ContentItem, ContentType, Conversation, Message, Role
from inferline.engines.base import Completion
from inferline.engines.cache import (
    CachedEngine,
    DiskStore,
    RedisStore,
    RequestKeys,
    cache_control,
    canonical_request,
    engine_identity,
    request_key,
)
from inferline.engines.llamacpp import LlamaCppInferenceEngine
from inferline.engines.openai_compat import (
    OpenAIInferenceEngine,
    RemoteInferenceEngine,
    RemoteVLLMInferenceEngine,
)
from inferline.engines.testing import FakeEngine
from inferline.errors import RetryableEngineError
from inferline.pipelines.fallback import FallbackChain
from inferline.pipelines.runner import arun_file
from inferline.settings.model import CacheSettings
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.gateway import remote
from tests.fixtures.redis_server import RedisServer

BASE = Conversation.from_prompt("What is the capital of France?", system="Answer in one word.")
PROMPTS = [Conversation.from_prompt(f"question {i}") for i in range(10)]


def llama(path: Path, **kwargs: Any) -> LlamaCppInferenceEngine:
    return LlamaCppInferenceEngine(ModelParams(model_name=str(path), **kwargs))


DEFAULTS = GenerationParams()


def key(identity: dict[str, Any], params: GenerationParams = DEFAULTS,
        conversation: Conversation = BASE) -> str:
    return request_key(canonical_request(identity, params, conversation))


# -- the key ------------------------------------------------------------------------------


def one_field_variants(model: Path, tmp_path: Path) -> list[tuple[str, str]]:
    """(what differs, key) for 10,000 requests that each differ from the base in one field."""
    base = engine_identity(llama(model))
    out: list[tuple[str, str]] = []
    gen: dict[str, Any] = {
        "max_new_tokens": [n for n in range(1, 1001) if n != 256],
        "temperature": [i / 500 for i in range(1, 1001)],
        "top_p": [i / 1001 for i in range(1, 1001)],
        "top_k": list(range(1, 501)),
        "min_p": [i / 1001 for i in range(1, 501)],
        "frequency_penalty": [i / 100 for i in range(1, 301)],
        "presence_penalty": [-i / 100 for i in range(1, 301)],
        "stop_strings": [[f"s{i}"] for i in range(300)],
        "stop_token_ids": [[i] for i in range(300)],
        "seed": list(range(500)),
        "logit_bias": [{str(i): 1.0} for i in range(300)],
        "guided_decoding": [GuidedDecodingParams(choice=[f"c{i}"]) for i in range(100)]
        + [GuidedDecodingParams(regex=f"r{i}") for i in range(100)]
        + [GuidedDecodingParams(json={"maxLength": i}) for i in range(100)],
        "skip_special_tokens": [False],
        "batch_size": list(range(1, 301)),
    }
    for name, values in gen.items():
        out += [(f"generation.{name}={v}", key(base, GenerationParams(**{name: v})))
                for v in values]
    system, user = BASE.messages

    def conv(*messages: Message) -> Conversation:
        return Conversation(messages=list(messages))

    out += [(f"user text {i}", key(base, conversation=conv(
        system, Message(role=Role.USER, content=f"{user.text} {i}")))) for i in range(800)]
    out += [(f"system text {i}", key(base, conversation=conv(
        Message(role=Role.SYSTEM, content=f"Answer in {i} words."), user))) for i in range(400)]
    out += [(f"message id {i}", key(base, conversation=conv(
        system, Message(role=Role.USER, content=user.text, id=f"m{i}")))) for i in range(200)]
    out += [(f"extra turn {i}", key(base, conversation=BASE.append(
        Message(role=Role.ASSISTANT, content=f"turn {i}")))) for i in range(200)]
    out += [(f"content parts {i}", key(base, conversation=conv(system, Message(
        role=Role.USER, content=[ContentItem(type=ContentType.TEXT, content=user.text),
                                 ContentItem(type=ContentType.IMAGE_URL,
                                             content=f"http://x/{i}.png")])))) for i in range(200)]
    out += [("role", key(base, conversation=conv(Message(role=Role.USER, content=system.text),
                                                 user)))]
    options: dict[str, list[Any]] = {
        "n_ctx": list(range(1, 301)), "n_batch": [n for n in range(1, 301) if n != 512],
        "n_ubatch": list(range(1, 201)), "n_gpu_layers": list(range(1, 101)),
        "n_threads": list(range(1, 101)), "flash_attn": [False], "low_vram": [True],
        "rope_freq_base": [float(i) for i in range(1, 101)], "type_k": list(range(1, 31)),
    }
    for name, values in options.items():
        out += [(f"model_kwargs.{name}={v}", key(engine_identity(llama(
            model, model_kwargs={name: v})))) for v in values]
    out += [(f"chat_template {i}", key(engine_identity(llama(model, chat_template=f"t{i}"))))
            for i in range(200)]
    out += [(f"model_max_length {i}", key(engine_identity(llama(model, model_max_length=i))))
            for i in range(1, 201)]
    for i in range(200):  # other model files: a different byte
        other = tmp_path / f"model{i}.gguf"
        other.write_bytes(model.read_bytes()[:4096] + i.to_bytes(2, "big"))
        out.append((f"model file {i}", key(engine_identity(llama(other)))))
    remote_base = RemoteParams(api_url="http://127.0.0.1:1/v1")
    out += [(f"remote model {i}", key(engine_identity(RemoteInferenceEngine(
        ModelParams(model_name=f"m{i}"), remote_params=remote_base)))) for i in range(300)]
    out += [(f"remote url {i}", key(engine_identity(RemoteInferenceEngine(
        ModelParams(model_name="m"), remote_params=RemoteParams(api_url=f"http://h{i}:1/v1")))))
        for i in range(300)]
    for cls in (RemoteVLLMInferenceEngine, OpenAIInferenceEngine):
        out.append((cls.__name__, key(engine_identity(cls(
            ModelParams(model_name="m"), remote_params=remote_base)))))
    return out


def test_10000_one_field_variations_give_10000_keys(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(random.Random(0).randbytes(64 * 1024))
    variants = one_field_variants(model, tmp_path)
    assert len(variants) >= 10_000
    seen: dict[str, str] = {key(engine_identity(llama(model))): "the base request"}
    collisions = [(seen[k], what) for what, k in variants if seen.setdefault(k, what) != what]
    assert collisions == []


async def test_equal_requests_equal_keys_and_what_the_key_leaves_out(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(1000))
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(model.read_bytes())
    base = key(engine_identity(llama(model)))
    rebuilt = Conversation.from_prompt("What is the capital of France?",
                                       system="Answer in one word.")
    assert key(engine_identity(llama(model)), conversation=rebuilt) == base
    assert key(engine_identity(llama(copy))) == base  # the model is its content, not its path
    # defaults filled in; options that cannot change an answer; metadata an engine never sees
    assert key(engine_identity(llama(model, model_kwargs={"n_batch": 512}))) == base
    assert key(engine_identity(llama(model, model_kwargs={"verbose": True}))) == base
    tagged = BASE.model_copy(update={"conversation_id": "x", "metadata": {"a": 1}})
    assert key(engine_identity(llama(model)), conversation=tagged) == base
    # remote: who pays and how fast do not count
    url = "http://127.0.0.1:1/v1"
    plain = RemoteInferenceEngine(ModelParams(model_name="m"),
                                  remote_params=RemoteParams(api_url=url))
    paced = RemoteInferenceEngine(ModelParams(model_name="m"), remote_params=RemoteParams(
        api_url=url + "/chat/completions", api_key_env_varname="K", num_workers=64,
        max_retries=9, requests_per_minute=10, connection_timeout=5))
    assert key(engine_identity(plain)) == key(engine_identity(paced))
    # the engine's generation defaults merged with the call's, row by row the same key
    tuned = FakeEngine("a")
    tuned.generation_params = GenerationParams(max_new_tokens=16)
    asked = InferenceConfig(generation=GenerationParams(max_new_tokens=16))
    [k1] = await RequestKeys(tuned).akeys([BASE], None)
    [k2] = await RequestKeys(FakeEngine("b")).akeys([BASE], asked)
    assert k1 == k2 != (await RequestKeys(FakeEngine("c")).akeys([BASE], None))[0]
    [request] = await RequestKeys(tuned).arequests([BASE], None)
    assert request_key(request) == k1


# -- the wrapper ---------------------------------------------------------------------------


def cached(engine: FakeEngine, tmp_path: Path, **settings: Any) -> CachedEngine:
    return CachedEngine(engine, DiskStore(tmp_path / "cache"), CacheSettings(**settings))


async def test_a_hit_costs_no_engine_call_and_says_so(tmp_path: Path) -> None:
    engine = FakeEngine("e")
    cache = cached(engine, tmp_path)
    first = await cache.agenerate(PROMPTS)
    again = await cache.agenerate([PROMPTS[3], Conversation.from_prompt("new"), PROMPTS[0]])
    assert engine.calls == 2 and len(engine.seen) == 11  # only "new" went to the engine
    assert [o.text for o in again] == ["e: question 3", "e: new", "e: question 0"]  # type: ignore[union-attr]
    hit = again[0]
    assert hit.provenance()["cache"] == "hit" and hit.served_by == "e"  # type: ignore[union-attr]
    assert hit.usage.as_dict()["total_tokens"] == 0  # type: ignore[union-attr]
    assert "cache" not in again[1].provenance()  # type: ignore[union-attr]
    assert "cache" not in first[0].provenance()  # type: ignore[union-attr]
    # another generation parameter is another request
    await cache.agenerate([PROMPTS[0]], InferenceConfig(generation=GenerationParams(seed=1)))
    assert engine.calls == 3


async def test_errors_are_never_stored(tmp_path: Path) -> None:
    engine = FakeEngine("e", fail={1: RetryableEngineError("busy", engine="e")})
    cache = cached(engine, tmp_path)
    [failed] = await cache.agenerate([BASE])
    assert isinstance(failed, RetryableEngineError)
    [answered] = await cache.agenerate([BASE])
    [hit] = await cache.agenerate([BASE])
    assert engine.calls == 2 and answered.cache is None and hit.cache == "hit"  # type: ignore[union-attr]


async def test_modes_cache_control_ttl_and_forget(tmp_path: Path) -> None:
    engine = FakeEngine("e")
    await cached(engine, tmp_path, mode="read_only").agenerate([BASE])
    await cached(engine, tmp_path, mode="read_only").agenerate([BASE])
    assert engine.calls == 2  # read_only never stored it
    await cached(engine, tmp_path, mode="write_only").agenerate([BASE])
    await cached(engine, tmp_path, mode="write_only").agenerate([BASE])
    assert engine.calls == 4  # write_only never reads
    [hit] = await cached(engine, tmp_path, mode="read_only").agenerate([BASE])
    assert hit.cache == "hit" and engine.calls == 4  # type: ignore[union-attr]

    cache = cached(engine, tmp_path)
    with cache_control(no_read=True):  # Cache-Control: no-cache
        [fresh] = await cache.agenerate([BASE])
    assert fresh.cache is None and engine.calls == 5  # type: ignore[union-attr]
    with cache_control(no_write=True):  # Cache-Control: no-store
        await cache.agenerate([PROMPTS[0]])
        await cache.agenerate([PROMPTS[0]])
    assert engine.calls == 7

    await cache.aforget([BASE])  # an answer found invalid after it was stored
    await cache.agenerate([BASE])
    assert engine.calls == 8

    short = cached(engine, tmp_path / "ttl", ttl_s=0.2)
    await short.agenerate([BASE])
    await short.agenerate([BASE])
    assert engine.calls == 9
    await asyncio.sleep(0.3)
    await short.agenerate([BASE])
    assert engine.calls == 10


async def test_streams_are_stored_and_served(tmp_path: Path) -> None:
    engine = FakeEngine("e")
    cache = cached(engine, tmp_path)
    first = [c async for c in cache.astream(BASE)]
    again = [c async for c in cache.astream(BASE)]
    assert engine.calls == 1
    assert "".join(c.text for c in again) == "".join(c.text for c in first) == "e: " + (
        BASE.messages[-1].text)
    assert again[-1].finish_reason == "stop"


@pytest.mark.slow
async def test_redis_is_shared_and_a_dead_redis_only_costs_hits(
        redis_factory: Callable[[], RedisServer]) -> None:
    server = redis_factory()
    try:
        engine = FakeEngine("e")
        settings = CacheSettings(backend="redis", url=server.url, prefix="t:")
        one = CachedEngine(engine, RedisStore(server.url, "t:"), settings)
        two = CachedEngine(engine, RedisStore(server.url, "t:"), settings)  # another replica
        await one.agenerate(PROMPTS)
        answers = await two.agenerate(PROMPTS)
        assert engine.calls == 1 and all(a.cache == "hit" for a in answers)  # type: ignore[union-attr]
        ttl = CachedEngine(engine, RedisStore(server.url, "ttl:"),
                           CacheSettings(backend="redis", url=server.url, ttl_s=0.2))
        await ttl.agenerate([BASE])
        await asyncio.sleep(0.4)
        await ttl.agenerate([BASE])
        assert engine.calls == 3
        await one.store.aclose()
        await two.store.aclose()
        await ttl.store.aclose()
    finally:
        server.kill()
    [answered] = await one.agenerate([PROMPTS[0]])  # refused: a miss, logged; the engine answers
    assert answered.text == "e: question 0" and engine.calls == 4  # type: ignore[union-attr]


# -- wired from settings ------------------------------------------------------------------------


def write_rows(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"country": f"c{i}"}) + "\n" for i in range(count)))
    return path


def answers(path: Path) -> list[tuple[int, str]]:
    return [(r["_row"], r["answer"]) for r in map(json.loads, path.read_text().splitlines())]


ECHO = """\
name: echo
input: {fields: [country]}
steps: [{template: {user: "{{ country }}"}}, {generate: {chain: main%s}}]
output: answer
"""


def settings(tmp_path: Path, url: str, engine_cache: str = "", chain_cache: str = "") -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(f"""
engines:
  up: {{type: REMOTE, model: {{model_name: m}},
        remote_params: {{api_url: "{url}", max_retries: 0, num_workers: 16}}{engine_cache}}}
chains:
  main: {{engines: [up]{chain_cache}}}
""")
    return path


async def run(settings_path: Path, pipeline: Path, rows: Path, out: Path) -> None:
    async with running(settings_path) as container:
        job = container.pipelines().load(str(pipeline))
        await arun_file(job, rows, out, concurrency=64, restart=True)


@pytest.mark.slow
async def test_rerunning_3000_rows_makes_no_engine_call(tmp_path: Path,
                                                        fault_server: FaultServer) -> None:
    scenario = Scenario()
    cache = f', cache: {{backend: disk, path: "{tmp_path / "c"}"}}'
    conf = settings(tmp_path, fault_server.url(scenario) + "/v1", engine_cache=cache)
    pipeline = tmp_path / "echo.yaml"
    pipeline.write_text(ECHO % "")
    rows = write_rows(tmp_path / "in.jsonl", 3000)
    await run(conf, pipeline, rows, tmp_path / "one.jsonl")
    assert len(scenario.requests) == 3000
    started = time.monotonic()
    await run(conf, pipeline, rows, tmp_path / "two.jsonl")
    assert len(scenario.requests) == 3000, "the rerun called the engine"
    assert answers(tmp_path / "one.jsonl") == answers(tmp_path / "two.jsonl")
    assert answers(tmp_path / "two.jsonl")[5] == (5, "echo: c5")
    again = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert {r["_meta"]["cache"] for r in again} == {"hit"}
    assert time.monotonic() - started < 30


async def test_chain_cache_and_a_step_that_turns_it_off(tmp_path: Path,
                                                        fault_server: FaultServer) -> None:
    scenario = Scenario()
    cache = f', cache: {{path: "{tmp_path / "c"}"}}'  # on the chain, not the engine
    conf = settings(tmp_path, fault_server.url(scenario) + "/v1", chain_cache=cache)
    rows = write_rows(tmp_path / "in.jsonl", 20)
    cached_step, off_step = tmp_path / "on.yaml", tmp_path / "off.yaml"
    cached_step.write_text(ECHO % "")
    off_step.write_text((ECHO % ", cache: off").replace("name: echo", "name: echo-off"))
    await run(conf, cached_step, rows, tmp_path / "a.jsonl")
    await run(conf, cached_step, rows, tmp_path / "b.jsonl")
    assert len(scenario.requests) == 20
    await run(conf, off_step, rows, tmp_path / "c.jsonl")
    assert len(scenario.requests) == 40
    assert answers(tmp_path / "a.jsonl") == answers(tmp_path / "c.jsonl")


@pytest.mark.slow
async def test_gateway_honours_cache_control(gateway: Any, upstream: Any,
                                             tmp_path: Path) -> None:
    up = await upstream()
    spec = remote(up.url).model_copy(update={"cache": CacheSettings(path=str(tmp_path / "c"))})
    gw = await gateway({"up": spec}, chains={"main": ["up"]})
    client = gw.client()
    messages = [{"role": "user", "content": "hello"}]

    async def ask(header: str | None = None) -> str:
        headers = {"Cache-Control": header} if header else None
        reply = await client.chat.completions.create(model="main", messages=messages,
                                                     extra_headers=headers)
        return str(reply.choices[0].message.content)

    assert await ask("no-store") == "echo: hello"  # answered, not stored
    assert await ask() == "echo: hello"  # stored
    assert await ask() == "echo: hello"  # a hit
    assert len(up.scenario.requests) == 2
    assert await ask("no-cache") == "echo: hello"  # not read
    assert len(up.scenario.requests) == 3


@pytest.mark.slow
async def test_llama_cpp_hit_is_the_same_text(tmp_path: Path, smollm_gguf: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    engine = LlamaCppInferenceEngine(ModelParams(model_name=str(smollm_gguf)), name="llama",
                                     generation_params=GenerationParams(max_new_tokens=12))
    async with CachedEngine(engine, DiskStore(tmp_path / "c"), CacheSettings()) as cache:
        [first] = await cache.agenerate([BASE])

        async def no_more(*args: Any) -> Any:
            raise AssertionError("llama.cpp was asked again")

        monkeypatch.setattr(engine, "_agenerate", no_more)
        [hit] = await cache.agenerate([BASE])
    assert isinstance(first, Completion) and isinstance(hit, Completion)
    assert hit.cache == "hit" and hit.text == first.text and first.text.strip()
    # a rerun that only hits never loads the model, even through a chain
    fresh = LlamaCppInferenceEngine(ModelParams(model_name=str(smollm_gguf)), name="llama",
                                    generation_params=GenerationParams(max_new_tokens=12))
    chain = FallbackChain("c", [CachedEngine(fresh, DiskStore(tmp_path / "c"), CacheSettings())])
    [again] = await chain.agenerate([BASE])
    assert again.text == first.text and not fresh.describe()["loaded"]  # type: ignore[union-attr]
