"""The seed's engine classes, importable by name; each backend module loads on first access.

    from inferline.inference import VLLMInferenceEngine, AnthropicInferenceEngine
"""

from __future__ import annotations

import importlib
from typing import Any

from inferline.engines import CLASS_MODULES

__all__ = sorted(CLASS_MODULES)


def __getattr__(name: str) -> Any:
    module = CLASS_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'inferline.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(f"inferline.engines.{module}"), name)


def __dir__() -> list[str]:
    return __all__
