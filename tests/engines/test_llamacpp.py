"""LlamaCppInferenceEngine on the packaged GGUF, for real."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from inferline.core.configs import GenerationParams, ModelParams
from inferline.core.types import Conversation
from inferline.engines.llamacpp import LlamaCppInferenceEngine, TopTokenGrammar
from inferline.errors import (
    ConfigurationError,
    EngineUnavailableError,
    FatalEngineError,
    UnsupportedParameterError,
    UnsupportedRequestError,
)
from tests.engines import local_checks as check


@pytest.fixture(scope="module")
def engine(smollm_gguf: Path) -> Iterator[LlamaCppInferenceEngine]:
    params = ModelParams(model_name=str(smollm_gguf),
                         model_kwargs={"n_gpu_layers": 0, "n_ctx": 2048, "n_batch": 512,
                                       "low_vram": True})
    engine = LlamaCppInferenceEngine(params)
    yield engine
    engine.close()


@pytest.mark.slow
async def test_answers_capital_of_france(engine: LlamaCppInferenceEngine) -> None:
    await check.answers_capital_of_france(engine)


@pytest.mark.slow
async def test_batch_of_16_in_order(engine: LlamaCppInferenceEngine) -> None:
    await check.batch_of_16_in_order(engine)


@pytest.mark.slow
async def test_stop_strings(engine: LlamaCppInferenceEngine) -> None:
    await check.stops_at_stop_string(engine)


@pytest.mark.slow
async def test_seed_repeats_sampling(engine: LlamaCppInferenceEngine) -> None:
    await check.seed_repeats_sampling(engine)


@pytest.mark.slow
async def test_stream_joins_to_the_same_text(engine: LlamaCppInferenceEngine) -> None:
    await check.stream_joins_to_text(engine)


@pytest.mark.slow
async def test_short_name_loads_the_packaged_model() -> None:
    engine = LlamaCppInferenceEngine(ModelParams(model_name="SmolLM2-135M-Instruct"))
    try:
        assert "Paris" in await check.answer(engine, max_new_tokens=16)
    finally:
        await engine.aclose()


async def test_missing_model_file_is_unavailable(tmp_path: Path) -> None:
    engine = LlamaCppInferenceEngine(ModelParams(model_name=str(tmp_path / "nope.gguf")))
    with pytest.raises(EngineUnavailableError, match="model file not found"):
        engine.load()


async def test_a_file_that_is_not_gguf_is_unavailable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf" * 100)
    with pytest.raises(EngineUnavailableError, match="cannot load"):
        LlamaCppInferenceEngine(ModelParams(model_name=str(bad))).load()


def test_misspelt_model_kwarg_names_key_and_hint() -> None:
    with pytest.raises(ConfigurationError) as err:
        LlamaCppInferenceEngine(ModelParams(model_name="x.gguf", model_kwargs={"n_gpu_layer": 0}))
    assert err.value.key == "model.model_kwargs.n_gpu_layer"
    assert err.value.hint == "n_gpu_layers"


def test_badly_typed_model_kwarg_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="n_ctx"):
        LlamaCppInferenceEngine(ModelParams(model_name="x.gguf", model_kwargs={"n_ctx": "big"}))


def test_unsupported_generation_parameter() -> None:
    with pytest.raises(UnsupportedParameterError, match="stop_token_ids"):
        LlamaCppInferenceEngine(ModelParams(model_name="x.gguf"),
                                generation_params=GenerationParams(stop_token_ids=[2]))


async def test_unsupported_parameter_per_call_is_refused(engine: LlamaCppInferenceEngine) -> None:
    with pytest.raises(UnsupportedParameterError, match="stop_token_ids"):
        await engine.ainfer([check.CAPITAL], check.config(stop_token_ids=[2]))
    assert engine.get_supported_params() == {
        "max_new_tokens", "temperature", "top_p", "top_k", "min_p", "frequency_penalty",
        "presence_penalty", "stop_strings", "seed", "logit_bias", "guided_decoding", "batch_size"}


PERSON = Conversation.from_prompt("Alice is 31 years old and lives in Lyon. Describe her.")
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def is_person(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) == {"name", "age"} and (
        isinstance(value["age"], int))


@pytest.mark.slow
@pytest.mark.parametrize(("guided", "valid"), [
    ({"json": SCHEMA}, lambda text: is_person(text)),
    ({"regex": r"[A-Z][a-z]+ is \d{1,3}"},
     lambda text: re.fullmatch(r"[A-Z][a-z]+ is \d{1,3}", text)),
    ({"choice": ["young", "old", "say \"maybe\""]},
     lambda text: text in ("young", "old", 'say "maybe"')),
], ids=["json", "regex", "choice"])
async def test_guided_decoding_constrains_the_answer(engine: LlamaCppInferenceEngine,
                                                     guided: dict[str, Any],
                                                     valid: Any) -> None:
    free = await check.answer(engine, PERSON, max_new_tokens=24)
    assert not valid(free), free  # unconstrained, the model writes prose
    text = await check.answer(engine, PERSON, max_new_tokens=24, guided_decoding=guided)
    assert valid(text), text
    [chunks] = [[c async for c in engine.astream(PERSON, check.config(
        max_new_tokens=24, guided_decoding=guided))]]
    assert "".join(c.text for c in chunks) == text


@pytest.mark.slow
@pytest.mark.parametrize("few", [TopTokenGrammar.FEW, 1], ids=["next-best", "whole-vocab"])
async def test_guided_greedy_answers_are_the_grammar_samplers(
        engine: LlamaCppInferenceEngine, few: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy decoding checks the top token against the grammar instead of masking the
    whole vocabulary (then the next best tokens, then every token): the answers are token
    for token those of llama-cpp-python's own grammar sampler, including where the grammar
    refuses the model's first choice."""
    from llama_cpp.llama_grammar import LlamaGrammar

    from inferline.core.configs import GuidedDecodingParams
    from inferline.engines.llamacpp import grammar

    monkeypatch.setattr(TopTokenGrammar, "FEW", few)

    story = Conversation.from_prompt("Write a long story about a dragon.")
    prompts = [PERSON, Conversation.from_prompt("Chen Wei is 28 and lives in Beijing."), story]
    # left free, the model starts the story in prose: the grammar refuses its first choice
    assert not (await check.answer(engine, story, max_new_tokens=4)).startswith("{")
    for guided in ({"json": SCHEMA}, {"regex": r"[A-Z][a-z]+ \d+"}):
        ours = [r.last_message().text for r in await engine.ainfer(
            prompts, check.config(max_new_tokens=32, guided_decoding=guided))]
        gbnf = LlamaGrammar.from_string(grammar(GuidedDecodingParams(**guided), engine="t"),
                                        verbose=False)
        llm = engine._ready()
        theirs = [llm.create_chat_completion(
            [{"role": "user", "content": c.last_message().text}], grammar=gbnf,
            temperature=0.0, max_tokens=32)["choices"][0]["message"]["content"]
            for c in prompts]
        assert ours == theirs, guided


def test_json_grammar_keeps_control_characters_out_of_strings(
        engine: LlamaCppInferenceEngine) -> None:
    """Mid-string, a raw newline the model would write next is refused (JSON forbids it, and
    an answer holding one does not parse); a backslash, starting an escaped one, is not."""
    import numpy as np
    from llama_cpp.llama_grammar import LlamaGrammar

    from inferline.core.configs import GuidedDecodingParams
    from inferline.engines.llamacpp import grammar

    engine.load()
    llm = engine._ready()
    gbnf = LlamaGrammar.from_string(grammar(GuidedDecodingParams(json=SCHEMA), engine="t"),
                                    verbose=False)
    prefix = llm.tokenize(b'{"name": "Al', add_bos=False)
    for text, allowed in ((b"\n", False), (b"\\", True)):
        [token] = llm.tokenize(text, add_bos=False)
        scores = np.zeros(llm.n_vocab(), dtype=np.single)
        scores[token] = 1.0  # the model's top choice
        check = TopTokenGrammar(llm, gbnf)
        check([], scores)  # an empty prompt
        assert (int(np.argmax(check(prefix, scores))) == token) is allowed, text
        check.close()


async def test_guided_decoding_llama_cannot_express_fails_the_request_only(
        engine: LlamaCppInferenceEngine) -> None:
    lookahead = check.config(guided_decoding={"regex": "(?=a)b"})
    with pytest.raises(UnsupportedRequestError, match="guided_decoding.regex.*assert"):
        await engine.ainfer([PERSON], lookahead)
    # llama-cpp-python's schema converter writes "\d" into a grammar llama.cpp cannot
    # parse, which would crash the process: refused instead
    digits = check.config(guided_decoding={"json": {"type": "string", "pattern": "^\\d+$"}})
    with pytest.raises(UnsupportedRequestError, match="cannot parse"):
        await engine.ainfer([PERSON], digits)
    assert await check.answer(engine, max_new_tokens=16)  # the engine still serves


@pytest.mark.slow
async def test_prompt_longer_than_context_is_fatal_and_rows_are_kept(
        engine: LlamaCppInferenceEngine) -> None:
    too_long = Conversation.from_prompt("Paris " * 3000)
    with pytest.raises(FatalEngineError, match="exceed context window"):
        await engine.ainfer([too_long], check.config(max_new_tokens=8))
    [ok, bad] = await engine.ainfer_partial([check.CAPITAL, too_long],
                                            check.config(max_new_tokens=16, batch_size=1))
    assert "Paris" in ok.conversation.last_message().text
    assert isinstance(bad.error, FatalEngineError)


@pytest.mark.slow
async def test_loads_lazily_and_once_under_concurrent_first_calls(smollm_gguf: Path) -> None:
    with capture_logs() as logs:
        engine = LlamaCppInferenceEngine(ModelParams(model_name=str(smollm_gguf)),
                                         generation_params=GenerationParams(max_new_tokens=4))
        assert not engine.describe()["loaded"] and not logs  # construction loads nothing
        try:
            outs = await asyncio.gather(*(engine.ainfer([Conversation.from_prompt(f"Count {i}")])
                                          for i in range(3)))
        finally:
            await engine.aclose()
    assert [len(o) for o in outs] == [1, 1, 1]
    assert [e["event"] for e in logs].count("engine_loaded") == 1


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


Q = "What is the capital of France?"


@pytest.mark.slow
@pytest.mark.parametrize(("prompt", "system", "template"), [
    (Q + " Answer in one word.", None, None),  # the GGUF's template (adds SmolLM2's system)
    (Q, "You are a helpful assistant.", None),  # right with flash attention (the default)
    (Q, None, CHATML),                          # plain ChatML: no system message at all
], ids=["model-template", "helpful-assistant", "no-system"])
async def test_paris_with_every_prompt_form(smollm_gguf: Path, prompt: str, system: str | None,
                                            template: str | None) -> None:
    """The engine's defaults answer right with the portable build on any x86-64 CPU."""
    engine = LlamaCppInferenceEngine(ModelParams(model_name=str(smollm_gguf),
                                                 chat_template=template))
    conv = Conversation.from_prompt(prompt, system)
    text = await check.answer(engine, conv, max_new_tokens=16)
    await engine.aclose()
    assert "Paris" in text, text


@pytest.mark.slow
async def test_self_check_passes_and_a_wrong_answer_makes_it_unavailable(
        smollm_gguf: Path) -> None:
    good = LlamaCppInferenceEngine(ModelParams(model_name=str(smollm_gguf)))
    assert "Paris" in await good.acheck()
    # a template that hides the question: the answer cannot name Paris
    blind = LlamaCppInferenceEngine(ModelParams(
        model_name=str(smollm_gguf), chat_template=CHATML.replace("{{ m['content'] }}", "Hi")))
    blind.self_check = True
    [outcome] = await blind.agenerate([check.CAPITAL])
    assert isinstance(outcome, EngineUnavailableError)
    assert "self-check failed: asked 'What is the capital of France?', got" in str(outcome)
    await good.aclose()
    await blind.aclose()


@pytest.mark.slow
async def test_a_bad_logit_bias_fails_the_request_not_the_engine(
        engine: LlamaCppInferenceEngine) -> None:
    """Issue 11: a word-keyed logit_bias once retired llama.cpp from a chain for good."""
    await check.bad_logit_bias_fails_the_request_not_the_engine(engine)
