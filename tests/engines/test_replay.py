"""Record/replay: a recorded llama.cpp run replays byte for byte without loading llama.cpp;
a request not in the cassette fails naming the nearest recorded one and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferline.containers import running
from inferline.core.configs import GenerationParams, InferenceConfig
from inferline.core.types import Conversation
from inferline.engines.base import Completion
from inferline.engines.replay import Cassette, CassetteMissError, ReplayEngine
from inferline.engines.testing import FakeEngine
from inferline.pipelines.fallback import FallbackChain
from inferline.pipelines.runner import arun_file
from inferline.settings import load_settings

PROMPTS = [Conversation.from_prompt(f"question {i}", system="Be brief.") for i in range(5)]


async def test_replay_serves_the_recording_and_never_touches_the_engine(tmp_path: Path) -> None:
    cassette = tmp_path / "run.cassette.jsonl"
    recorded = await ReplayEngine(FakeEngine("e"), Cassette(cassette), "record").agenerate(
        PROMPTS)
    assert len(cassette.read_text().splitlines()) == 5
    # an engine that could not even start here: replay never asks it
    broken = FakeEngine("e", unavailable="no GPU here")
    replay = ReplayEngine(broken, Cassette(cassette), "replay")
    replay.preflight()
    await replay.aload()
    again = await replay.agenerate(list(reversed(PROMPTS)))
    assert broken.calls == 0
    mine = [o.provenance() for o in again if isinstance(o, Completion)]
    theirs = [o.provenance() for o in reversed(recorded) if isinstance(o, Completion)]
    assert mine == theirs and len(mine) == 5  # text, usage, attempts and their latency
    assert [o.text for o in again] == [f"e: question {i}" for i in reversed(range(5))]  # type: ignore[union-attr]


async def test_an_unrecorded_request_names_the_nearest_and_the_field(tmp_path: Path) -> None:
    cassette = Cassette(tmp_path / "c.jsonl")
    await ReplayEngine(FakeEngine("e"), cassette, "record").agenerate(PROMPTS)
    replay = ReplayEngine(FakeEngine("e"), Cassette(cassette.path), "replay")
    [miss] = await replay.agenerate(
        [PROMPTS[2]], InferenceConfig(generation=GenerationParams(temperature=0.7)))
    assert isinstance(miss, CassetteMissError)
    assert "differs in 1 field(s): generation.temperature: recorded 0.0, asked 0.7" in str(miss)
    [miss] = await replay.agenerate([Conversation.from_prompt("question 3", system="Be long.")])
    assert isinstance(miss, CassetteMissError)
    assert "differs in 1 field(s): messages.0.content: recorded 'Be brief.', asked 'Be long.'" \
        in str(miss)
    with pytest.raises(CassetteMissError, match="messages.1.content"):
        async for _ in replay.astream(Conversation.from_prompt("question 9", system="Be brief.")):
            pass


async def test_a_chain_replays_the_fallback_it_recorded(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    record = [ReplayEngine(FakeEngine("a", unavailable="down"), Cassette(path), "record"),
              ReplayEngine(FakeEngine("b"), Cassette(path), "record")]
    first = await FallbackChain("c", record).agenerate(PROMPTS)
    replay = [ReplayEngine(FakeEngine("a"), Cassette(path), "replay"),  # up now: not recorded
              ReplayEngine(FakeEngine("b"), Cassette(path), "replay")]
    again = await FallbackChain("c", replay).agenerate(PROMPTS)
    assert [o.served_by for o in again] == ["b"] * 5  # type: ignore[union-attr]
    assert [o.text for o in again] == [o.text for o in first]  # type: ignore[union-attr]


def test_inferline_replay_sets_the_mode_and_keeps_the_cassette(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "s.yaml"
    conf.write_text("replay: off\nreplay_cassette: runs/a.jsonl\n")
    assert load_settings(conf, dotenv=None).replay == "off"
    monkeypatch.setenv("INFERLINE_REPLAY", "replay")
    settings = load_settings(conf, dotenv=None)
    assert (settings.replay, settings.replay_cassette) == ("replay", "runs/a.jsonl")


QUIZ = """\
name: quiz
input: {fields: [n]}
steps:
  - template: {system: Answer with a number., user: "What is {{ n }} plus {{ n }}?"}
  - generate: {chain: main, generation: {max_new_tokens: %d, temperature: 0}}
output: answer
"""


@pytest.mark.slow  # one llama.cpp thread: two on a busy 2-core machine were 7x slower
async def test_a_recorded_llama_run_replays_byte_identical_without_llama(
        tmp_path: Path, smollm_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "settings.yaml"
    conf.write_text(f"""
engines:
  llama: {{type: LLAMACPP, model: {{model_name: "{smollm_gguf}", model_kwargs: {{n_threads: 1}}}}}}
chains:
  main: [llama]
replay_cassette: "{tmp_path / 'run.cassette.jsonl'}"
""")
    pipeline = tmp_path / "quiz.yaml"
    pipeline.write_text(QUIZ % 4)
    rows = tmp_path / "in.jsonl"
    rows.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(100)))

    async def run(out: Path, mode: str, text: str | None = None) -> bool:
        """Run the pipeline in ``mode``; whether llama.cpp was loaded."""
        monkeypatch.setenv("INFERLINE_REPLAY", mode)
        if text is not None:
            pipeline.write_text(text)
        async with running(conf) as container:
            await arun_file(container.pipelines().load(str(pipeline)), rows, out)
            return bool(container.engines().engine("llama").describe()["loaded"])

    assert await run(tmp_path / "recorded.jsonl", "record")
    assert len((tmp_path / "run.cassette.jsonl").read_text().splitlines()) == 100
    assert not await run(tmp_path / "replayed.jsonl", "replay")
    recorded = (tmp_path / "recorded.jsonl").read_bytes()
    assert len(recorded.splitlines()) == 100
    assert (tmp_path / "replayed.jsonl").read_bytes() == recorded

    assert not await run(tmp_path / "changed.jsonl", "replay", QUIZ % 5)
    [first, *rest] = (tmp_path / "changed.errors.jsonl").read_text().splitlines()
    assert len(rest) == 99
    message = json.loads(first)["error"]["message"]
    assert "differs in 1 field(s): generation.max_new_tokens: recorded 4, asked 5" in message
