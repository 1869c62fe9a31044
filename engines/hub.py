"""Hub model ids, resolved fast or refused: never a hang on an unreachable hub.

With ``HF_HUB_OFFLINE`` set, only the local Hugging Face cache is consulted.
Otherwise one bounded probe asks the hub whether the model exists before any
download starts. Every failure is ``EngineUnavailableError``, so a fallback
chain moves on to its next engine.

    resolve_hub("HuggingFaceTB/SmolLM2-135M-Instruct", "hf")  # a local snapshot dir
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import structlog

from inferline.errors import EngineUnavailableError

log = structlog.get_logger(__name__)

PROBE_TIMEOUT_S = 10.0
_HF_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt"]


def resolve_hub(repo_id: str, fmt: str = "hf", *, engine: str = "") -> str:
    """A local directory (``fmt="hf"``) or GGUF file (``"gguf"``) for a hub model id."""
    try:
        import huggingface_hub.constants
        import huggingface_hub.errors  # submodules are not loaded by the package
    except ImportError as exc:
        raise EngineUnavailableError(
            f"model {repo_id!r} is a hub id and huggingface_hub is not installed: "
            "pip install 'inferline[hf]'", engine=engine) from exc
    patterns = ["*.gguf"] if fmt == "gguf" else _HF_PATTERNS
    if _offline(huggingface_hub):
        snapshot = _cached(huggingface_hub, repo_id, patterns, engine)
    else:
        _probe(huggingface_hub, repo_id, engine)
        snapshot = huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns)
    return _pick(Path(snapshot), fmt, repo_id, engine)


def _offline(hub: Any) -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; the env may have changed since.
    env = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return env or bool(hub.constants.HF_HUB_OFFLINE)


def _cached(hub: Any, repo_id: str, patterns: list[str], engine: str) -> str:
    try:
        return str(hub.snapshot_download(repo_id, allow_patterns=patterns,
                                         local_files_only=True))
    except (hub.errors.LocalEntryNotFoundError, hub.errors.HFValidationError, OSError) as exc:
        raise EngineUnavailableError(
            f"model not found: {repo_id!r} is not a local path, a packaged model "
            "(see `inferline models`) or in the Hugging Face cache, and HF_HUB_OFFLINE is set",
            engine=engine) from exc


def _probe(hub: Any, repo_id: str, engine: str) -> None:
    """Ask the hub about ``repo_id`` with a hard wall-clock bound (DNS included)."""
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            endpoint = os.environ.get("HF_ENDPOINT")  # read now, not at hub import
            hub.HfApi(endpoint=endpoint).model_info(repo_id, timeout=PROBE_TIMEOUT_S)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=ask, name="inferline-hub-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 2)
    if not outcome:
        raise EngineUnavailableError(f"hub unreachable: no answer about {repo_id!r} "
                                     f"within {PROBE_TIMEOUT_S:.0f}s", engine=engine)
    if (exc := outcome[0]) is None:
        return
    if isinstance(exc, (hub.errors.RepositoryNotFoundError, hub.errors.HFValidationError)):
        raise EngineUnavailableError(f"model not found on the hub: {repo_id!r}",
                                     engine=engine) from exc
    log.info("hub_unreachable", repo=repo_id, error=type(exc).__name__)
    raise EngineUnavailableError(f"hub unreachable for {repo_id!r}: {type(exc).__name__}: {exc}",
                                 engine=engine) from exc


def _pick(snapshot: Path, fmt: str, repo_id: str, engine: str) -> str:
    if fmt != "gguf":
        return str(snapshot)
    ggufs = sorted(snapshot.rglob("*.gguf"))
    if len(ggufs) != 1:
        raise EngineUnavailableError(f"hub model {repo_id!r} has {len(ggufs)} GGUF files; "
                                     "download one and give its path", engine=engine)
    return str(ggufs[0])
