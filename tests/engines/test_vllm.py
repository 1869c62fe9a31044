"""VLLMInferenceEngine (in-process vllm.LLM) on the packaged model's HF copy, for real.

The module loads vLLM once (eager mode: no torch.compile, so it starts in ~30 s
on a CPU) and checks at the end that closing it leaves no engine processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inferline.core.configs import GenerationParams, ModelParams
from inferline.core.types import Conversation
from inferline.engines.hardware import cuda_available
from inferline.engines.llamacpp import LlamaCppInferenceEngine
from inferline.engines.native import NativeTextInferenceEngine
from inferline.engines.vllm import VLLMInferenceEngine, vllm_build
from inferline.errors import (
    ConfigurationError,
    EngineUnavailableError,
    UnsupportedRequestError,
)
from tests.engines import local_checks as check

needs_vllm = pytest.mark.skipif(vllm_build() is None, reason="vllm is not installed")


@pytest.fixture(scope="module")
def engine(smollm_hf: Path) -> Iterator[VLLMInferenceEngine]:
    params = ModelParams(model_name=str(smollm_hf), model_kwargs={
        "max_model_len": 2048, "enforce_eager": True, "enable_prefix_caching": True})
    engine = VLLMInferenceEngine(params)
    yield engine
    engine.close()


@needs_vllm
@pytest.mark.slow
async def test_answers_capital_of_france(engine: VLLMInferenceEngine) -> None:
    await check.answers_capital_of_france(engine)


CAPITALS = {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo", "Germany": "Berlin",
            "Spain": "Madrid", "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo"}


@needs_vllm
@pytest.mark.slow
async def test_the_three_local_engines_agree(engine: VLLMInferenceEngine, smollm_gguf: Path,
                                             smollm_hf: Path) -> None:
    """Eight capitals, greedy, on vLLM, llama.cpp and transformers. The same model in three
    numerics (bf16, Q8 activations, fp32 CPU kernels) may flip a near-tie, so the bar is a
    rate: each engine right on at least 7 of 8, and each pair agreeing on at least 7 of 8."""
    others = [LlamaCppInferenceEngine(ModelParams(model_name=str(smollm_gguf))),
              NativeTextInferenceEngine(ModelParams(model_name=str(smollm_hf)))]
    convs = [Conversation.from_prompt(f"What is the capital of {country}?", check.SYSTEM)
             for country in CAPITALS]
    try:
        found = {}
        for e in [engine, *others]:
            outs = await e.ainfer(convs, check.config(max_new_tokens=16))
            found[type(e).__name__] = [next((c for c in CAPITALS.values()
                                             if c in o.last_message().text), None) for o in outs]
    finally:
        for other in others:
            await other.aclose()
    right = {name: sum(a == b for a, b in zip(got, CAPITALS.values(), strict=True))
             for name, got in found.items()}
    names = list(found)
    agree = {f"{a}/{b}": sum(x == y for x, y in zip(found[a], found[b], strict=True))
             for i, a in enumerate(names) for b in names[i + 1:]}
    print(f"right of 8: {right}; pairs agreeing of 8: {agree}")
    assert min(right.values()) >= 7, found
    assert min(agree.values()) >= 7, found


@needs_vllm
@pytest.mark.slow
async def test_batch_of_16_in_order(engine: VLLMInferenceEngine) -> None:
    await check.batch_of_16_in_order(engine)


@needs_vllm
@pytest.mark.slow
async def test_stop_strings(engine: VLLMInferenceEngine) -> None:
    await check.stops_at_stop_string(engine)


@needs_vllm
@pytest.mark.slow
async def test_seed_repeats_sampling(engine: VLLMInferenceEngine) -> None:
    await check.seed_repeats_sampling(engine)


@needs_vllm
@pytest.mark.slow
async def test_guided_choice_constrains_the_answer(engine: VLLMInferenceEngine) -> None:
    text = await check.answer(engine, max_new_tokens=8,
                              guided_decoding={"choice": ["Paris", "Lyon", "Nice"]})
    assert text in {"Paris", "Lyon", "Nice"}


@needs_vllm
@pytest.mark.slow
async def test_astream_yields_the_whole_answer_once(engine: VLLMInferenceEngine) -> None:
    assert not engine.can_stream  # vllm.LLM has no token streaming
    chunks = [c async for c in engine.astream(check.CAPITAL, check.config(max_new_tokens=32))]
    assert len(chunks) == 1 and "Paris" in chunks[0].text
    assert chunks[0].finish_reason == "stop"


def test_supports_every_generation_parameter_but_tools() -> None:
    engine = VLLMInferenceEngine(ModelParams(model_name="m"))
    assert engine.get_supported_params() == set(GenerationParams.model_fields) - {
        "tools", "tool_choice"}  # in-process vLLM has no tool-call parser: a server has


def test_misspelt_model_kwarg_names_key_and_hint() -> None:
    with pytest.raises(ConfigurationError) as err:
        VLLMInferenceEngine(ModelParams(model_name="m",
                                        model_kwargs={"tensor_paralel_size": 2}))
    assert err.value.key == "model.model_kwargs.tensor_paralel_size"
    assert err.value.hint == "tensor_parallel_size"


def test_logit_bias_needs_token_ids() -> None:
    engine = VLLMInferenceEngine(ModelParams(model_name="m"))
    with pytest.raises(UnsupportedRequestError, match="logit_bias"):
        engine._sampling(GenerationParams(logit_bias={"Paris": 5.0}))


@needs_vllm
async def test_missing_model_dir_is_unavailable(tmp_path: Path) -> None:
    engine = VLLMInferenceEngine(ModelParams(model_name=str(tmp_path / "no-model")))
    with pytest.raises(EngineUnavailableError, match="model file not found"):
        engine.load()


@pytest.mark.skipif(cuda_available(), reason="checks the no-GPU refusal")
def test_device_cuda_without_gpu_is_unavailable() -> None:
    engine = VLLMInferenceEngine(ModelParams(model_name="smollm2-135m",
                                             model_kwargs={"device": "cuda"}))
    with pytest.raises(EngineUnavailableError, match="no GPU"):
        engine.load()


@needs_vllm
@pytest.mark.slow
async def test_zz_close_stops_engine_processes(engine: VLLMInferenceEngine) -> None:
    await check.answer(engine, max_new_tokens=4)  # loaded (if run alone)
    assert any("VLLM" in cmd for cmd in check.child_processes())
    await engine.aclose()
    assert not any("VLLM" in cmd for cmd in check.child_processes()), check.child_processes()


@pytest.mark.gpu
@pytest.mark.slow
async def test_answers_on_a_cuda_gpu(smollm_hf: Path) -> None:
    """The seed's GPU form (device cuda); runs where vllm has a CUDA GPU, as on a GPU server."""
    if vllm_build() != "cuda" or not cuda_available():
        pytest.skip("needs a CUDA build of vllm and a CUDA GPU")
    engine = VLLMInferenceEngine(ModelParams(model_name=str(smollm_hf), model_kwargs={
        "device": "cuda", "gpu_memory_utilization": 0.3, "max_model_len": 2048}))
    try:
        await check.answers_capital_of_france(engine)
    finally:
        await engine.aclose()


def test_a_vllm_server_not_ready_in_time_names_the_cause() -> None:
    from tests.fixtures.vllm_server import not_ready_cause

    cold = "INFO [backends.py:161] Compiling model again due to a larger compilation range\n"
    assert "compiling the model with torch inductor" in not_ready_cause(cold)
    stuck = "INFO:     Started server process [1]\nINFO:     Waiting for application startup.\n"
    assert not_ready_cause(stuck) == "stuck after: INFO:     Waiting for application startup."
