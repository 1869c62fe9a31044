"""The shape of inferline's settings: named engines, fallback chains, pipelines, server, logging.

    engines:
      local_llamacpp: {type: LLAMACPP, model: {model_name: smollm2-135m}}
      openai: {type: OPENAI, model: {model_name: gpt-4o-mini},
               remote_params: {api_key_env_varname: OPENAI_API_KEY}}
    chains:
      default: [local_vllm, local_llamacpp, openai]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inferline.core.configs import (
    GenerationParams,
    InferenceEngineType,
    ModelParams,
    RemoteParams,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EngineSettings(_Section):
    """One named engine: its type and the parameters it is built with."""

    type: InferenceEngineType
    model: ModelParams = ModelParams()
    generation: GenerationParams = GenerationParams()
    remote_params: RemoteParams | None = None
    #: on first load, ask a known question and refuse the engine if it answers wrongly
    self_check: bool = False

    @field_validator("type", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class CircuitBreakerSettings(_Section):
    failure_threshold: int = Field(default=5, ge=1)  # consecutive failures that open it
    cooldown_s: float = Field(default=30.0, ge=0)  # open this long, then one trial call


FallbackOn = Literal["unavailable", "retryable", "fatal"]


class ChainSettings(_Section):
    """Engines tried in order. Written as a plain list or as this mapping.

    A member may also name another chain, whose engines take its place
    (``default: [local, openai]`` with ``local: [local_vllm, local_llamacpp]``).
    """

    engines: list[str] = Field(min_length=1)
    fallback_on: list[FallbackOn] = ["unavailable", "retryable"]
    max_attempts: int | None = Field(default=None, ge=1)  # total, across engines; None = one each
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        return {"engines": value} if isinstance(value, list) else value


class LogSettings(_Section):
    level: str = "INFO"
    format: Literal["console", "json"] = "console"
    log_prompts: bool = False  # prompt and answer text in logs; off by default


class PipelineSettings(_Section):
    dirs: list[str] = []  # folders searched for pipeline YAML files by name
    allowed_modules: list[str] = []  # module prefixes a `callable` post-processor may import from


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key_env_varnames: list[str] = []  # each names a variable holding one accepted bearer key
    allow_unauthenticated_public: bool = False  # bind non-loopback without keys only if set
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)  # in-flight requests; beyond: 429 + Retry-After
    shutdown_grace_s: float = Field(default=30.0, ge=0)


class InferlineSettings(_Section):
    """The resolved settings of one deployment (profile)."""

    env: str = "dev"
    log: LogSettings = LogSettings()
    engines: dict[str, EngineSettings] = {}
    chains: dict[str, ChainSettings] = {}
    pipelines: PipelineSettings = PipelineSettings()
    server: ServerSettings = ServerSettings()

    @model_validator(mode="after")
    def _chains_name_engines(self) -> InferlineSettings:
        for chain_name, chain in self.chains.items():
            if len(set(chain.engines)) != len(chain.engines):
                raise ValueError(f"chain {chain_name!r} lists an engine twice")
            expand_chain(chain_name, self.chains, self.engines)
        return self


def expand_chain(name: str, chains: Mapping[str, Any], engines: Mapping[str, Any],
                 _path: tuple[str, ...] = ()) -> list[str]:
    """The engine names of chain ``name``, with member chains expanded in place.

    Raises ``ValueError`` for an unknown member or a cycle (``a -> b -> a``). An
    engine reached twice through member chains is tried once, at its first place.
    """
    if name in _path:
        raise ValueError(f"chain {_path[0]!r} is cyclic: {' -> '.join((*_path, name))}")
    out: list[str] = []
    for member in chain_members(chains[name]):
        if member in engines:
            out.append(member)
        elif member in chains:
            out.extend(expand_chain(member, chains, engines, (*_path, name)))
        else:
            raise ValueError(f"chain {name!r} names unknown engine or chain {member!r}")
    return list(dict.fromkeys(out))


def chain_members(chain: Any) -> list[str]:
    """A chain's member names, from a ``ChainSettings`` or its raw YAML (list or mapping)."""
    if isinstance(chain, ChainSettings):
        return chain.engines
    if isinstance(chain, dict):
        return list(chain.get("engines") or [])
    return list(chain or [])
