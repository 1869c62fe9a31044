"""The seed's hardware tables as data: memory estimates, and refusing what cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferline.core.configs import ModelParams
from inferline.engines.hardware import GB, available_memory, check_fits, estimate_memory
from inferline.engines.llamacpp import LlamaCppInferenceEngine
from inferline.engines.native import NativeTextInferenceEngine
from inferline.errors import ConfigurationError, EngineUnavailableError


@pytest.mark.parametrize(("params_b", "precision", "gb"), [
    (1, "bf16", 2), (7, "fp16", 14), (70, "bfloat16", 140),  # the seed's BF16/FP16 table
    (1, "q4", 0.5), (13, "Q4_K_M", 6.5), (70, "q4", 35),  # the seed's Q4 table
])
def test_table_points(params_b: float, precision: str, gb: float) -> None:
    assert estimate_memory(params_b, precision) == int(gb * GB)


def test_between_and_beyond_the_table() -> None:
    assert estimate_memory(5, "bf16") == 10 * GB  # between 3B (6 GB) and 7B (14 GB)
    assert estimate_memory(0.135, "q4") == int(0.0675 * GB)  # below 1B: per parameter
    assert estimate_memory(405, "bf16") == 810 * GB  # above 70B: per parameter
    assert estimate_memory(7, "float32") == 2 * estimate_memory(7, "bf16")


def test_unknown_precision_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown precision 'fp12'"):
        estimate_memory(7, "fp12")


def test_check_fits_refuses_with_the_reason() -> None:
    free = available_memory("cpu")
    assert free and free > 0
    check_fits(1000, device="cpu")
    with pytest.raises(EngineUnavailableError, match=r"does not fit: needs ~\d+.\d GiB on cpu"):
        check_fits(free * 2, device="cpu", what="model x")


def test_engine_refuses_a_gguf_larger_than_memory(tmp_path: Path) -> None:
    huge = tmp_path / "huge.gguf"
    with open(huge, "wb") as fh:  # sparse: takes no disk
        fh.truncate(2 * (available_memory("cpu") or 0) + 1)
    engine = LlamaCppInferenceEngine(ModelParams(model_name=str(huge)))
    with pytest.raises(EngineUnavailableError, match="does not fit"):
        engine.load()


def test_engine_refuses_an_hf_model_too_big_for_its_dtype(tmp_path: Path) -> None:
    model = tmp_path / "big"
    model.mkdir()
    (model / "config.json").write_text('{"dtype": "bfloat16"}')
    with open(model / "model.safetensors", "wb") as fh:
        fh.truncate((available_memory("cpu") or 0) // 2)  # fits as bf16, not as float32
    engine = NativeTextInferenceEngine(ModelParams(model_name=str(model),
                                                   model_kwargs={"torch_dtype": "float32"}))
    with pytest.raises(EngineUnavailableError, match="does not fit"):
        engine.load()
