"""NativeTextInferenceEngine (transformers + torch) on the packaged model's HF copy, for real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inferline.core.configs import GenerationParams, ModelParams
from inferline.engines.hardware import cuda_available
from inferline.engines.native import NativeTextInferenceEngine
from inferline.errors import (
    ConfigurationError,
    EngineUnavailableError,
    UnsupportedParameterError,
)
from tests.engines import local_checks as check


@pytest.fixture(scope="module")
def engine(smollm_hf: Path) -> Iterator[NativeTextInferenceEngine]:
    params = ModelParams(model_name=str(smollm_hf),
                         model_kwargs={"device_map": "auto", "torch_dtype": "bfloat16"})
    engine = NativeTextInferenceEngine(params)
    yield engine
    engine.close()


@pytest.mark.slow
async def test_answers_capital_of_france(engine: NativeTextInferenceEngine) -> None:
    await check.answers_capital_of_france(engine)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [None, 5])
async def test_batch_of_16_in_order(engine: NativeTextInferenceEngine,
                                    batch_size: int | None) -> None:
    await check.batch_of_16_in_order(engine, batch_size=batch_size)


@pytest.mark.slow
async def test_stop_strings(engine: NativeTextInferenceEngine) -> None:
    await check.stops_at_stop_string(engine)


@pytest.mark.slow
async def test_seed_repeats_sampling(engine: NativeTextInferenceEngine) -> None:
    await check.seed_repeats_sampling(engine)


@pytest.mark.slow
async def test_a_bad_logit_bias_fails_the_request_not_the_engine(
        engine: NativeTextInferenceEngine) -> None:
    """It was a ConfigurationError: the chain counted it against the engine's breaker."""
    await check.bad_logit_bias_fails_the_request_not_the_engine(engine)


@pytest.mark.slow
async def test_stream_joins_to_the_same_text(engine: NativeTextInferenceEngine) -> None:
    await check.stream_joins_to_text(engine)


@pytest.mark.slow
async def test_stopping_a_stream_early_frees_the_engine(engine: NativeTextInferenceEngine) -> None:
    stream = engine.astream(check.CAPITAL, check.config(max_new_tokens=200))
    async for _ in stream:
        break
    await stream.aclose()
    assert "Paris" in await check.answer(engine, max_new_tokens=16)  # the lock was released


async def test_missing_model_dir_is_unavailable(tmp_path: Path) -> None:
    engine = NativeTextInferenceEngine(ModelParams(model_name=str(tmp_path / "no-model")))
    with pytest.raises(EngineUnavailableError, match="model file not found"):
        engine.load()


def test_misspelt_model_kwarg_names_key_and_hint() -> None:
    with pytest.raises(ConfigurationError) as err:
        NativeTextInferenceEngine(ModelParams(model_name="m", model_kwargs={"torch_dype": "bf16"}))
    assert err.value.key == "model.model_kwargs.torch_dype"
    assert err.value.hint == "torch_dtype"


def test_unknown_dtype_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="torch_dtype"):
        NativeTextInferenceEngine(ModelParams(model_name="m", model_kwargs={"torch_dtype": "fp12"}))


def test_unsupported_generation_parameter() -> None:
    with pytest.raises(UnsupportedParameterError, match="presence_penalty"):
        NativeTextInferenceEngine(ModelParams(model_name="m"),
                                  generation_params=GenerationParams(presence_penalty=0.5))


@pytest.mark.skipif(cuda_available(), reason="checks the CPU-only refusal")
def test_load_in_4bit_without_gpu_is_a_clear_refusal(smollm_hf: Path) -> None:
    engine = NativeTextInferenceEngine(ModelParams(model_name=str(smollm_hf),
                                                   model_kwargs={"load_in_4bit": True}))
    with pytest.raises(EngineUnavailableError, match="load_in_4bit needs a CUDA GPU"):
        engine.load()
