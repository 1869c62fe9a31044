"""Engine registry: engine types to classes, imported only when asked for.

    cls = engine_class(InferenceEngineType.LLAMACPP)
    engine = build_engine(InferenceEngineType.REMOTE, ModelParams(model_name="m"),
                          remote_params=RemoteParams(api_url="http://127.0.0.1:8000/v1"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from inferline.core.configs import (
    GenerationParams,
    InferenceEngineType,
    ModelParams,
    RemoteParams,
)
from inferline.errors import ConfigurationError

if TYPE_CHECKING:
    from inferline.engines.base import BaseInferenceEngine

T = InferenceEngineType

#: engine type -> (module under inferline.engines, class name)
REGISTRY: dict[InferenceEngineType, tuple[str, str]] = {
    T.NATIVE: ("native", "NativeTextInferenceEngine"),
    T.VLLM: ("vllm", "VLLMInferenceEngine"),
    T.LLAMACPP: ("llamacpp", "LlamaCppInferenceEngine"),
    T.REMOTE: ("openai_compat", "RemoteInferenceEngine"),
    T.REMOTE_VLLM: ("openai_compat", "RemoteVLLMInferenceEngine"),
    T.OPENAI: ("openai_compat", "OpenAIInferenceEngine"),
    T.GOOGLE_GEMINI: ("openai_compat", "GoogleGeminiInferenceEngine"),
    T.PARASAIL: ("openai_compat", "ParasailInferenceEngine"),
    T.ANTHROPIC: ("anthropic", "AnthropicInferenceEngine"),
    T.GOOGLE_VERTEX: ("vertex", "GoogleVertexInferenceEngine"),
}

CLASS_MODULES: dict[str, str] = {cls: mod for mod, cls in REGISTRY.values()}


def engine_type(value: str | InferenceEngineType) -> InferenceEngineType:
    """Parse an engine type name case-insensitively; the error lists the valid ones."""
    try:
        return InferenceEngineType(str(getattr(value, "value", value)).upper())
    except ValueError:
        valid = ", ".join(t.value for t in InferenceEngineType)
        raise ConfigurationError(f"unknown engine type {value!r}; expected one of {valid}",
                                 key="engine") from None


def engine_class(kind: str | InferenceEngineType) -> type[BaseInferenceEngine]:
    module, name = REGISTRY[engine_type(kind)]
    cls: type[BaseInferenceEngine] = getattr(
        importlib.import_module(f"inferline.engines.{module}"), name)
    return cls


def build_engine(kind: str | InferenceEngineType, model_params: ModelParams, *,
                 generation_params: GenerationParams | None = None,
                 remote_params: RemoteParams | None = None,
                 name: str | None = None) -> BaseInferenceEngine:
    """Construct (not load) an engine of ``kind``. Remote params go only to remote engines."""
    cls = engine_class(kind)
    kwargs: dict[str, Any] = {"generation_params": generation_params, "name": name}
    if not cls.is_local:
        kwargs["remote_params"] = remote_params
    elif remote_params is not None:
        raise ConfigurationError(f"{cls.__name__} is local and takes no remote_params",
                                 key="remote_params")
    return cls(model_params, **kwargs)
