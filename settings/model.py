"""The shape of inferline's settings: named engines, fallback chains, pipelines, server, logging.

    engines:
      local_llamacpp: {type: LLAMACPP, model: {model_name: smollm2-135m}}
      openai: {type: OPENAI, model: {model_name: gpt-4o-mini},
               remote_params: {api_key_env_varname: OPENAI_API_KEY}}
    chains:
      default: [local_vllm, local_llamacpp, openai]
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from inferline.core.configs import (
    GenerationParams,
    InferenceEngineType,
    ModelParams,
    RemoteParams,
)
from inferline.core.cost import Price


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _off(value: Any) -> Any:
    """A mode of ``off``, which YAML reads as false."""
    return "off" if value is False else value


class CacheSettings(_Section):
    """An exact response cache (``engines/cache.py``); off unless an engine, chain or
    pipeline step sets one. A bare mode is short for ``{mode: ...}``: ``cache: off``.

        cache: {backend: disk, mode: read_write, ttl_s: 86400}
        cache: {backend: redis, url: "redis://127.0.0.1:6379/0"}
    """

    backend: Literal["disk", "redis"] = "disk"
    mode: Annotated[Literal["off", "read_write", "read_only", "write_only"],
                    BeforeValidator(_off)] = "read_write"
    ttl_s: float | None = Field(default=None, gt=0)  # None: entries never expire
    path: str | None = None  # disk: the folder (default: <INFERLINE_DATA_DIR>/responses)
    url: str = "redis://127.0.0.1:6379/0"  # redis
    prefix: str = "inferline:cache:"  # redis: key prefix

    @model_validator(mode="before")
    @classmethod
    def _from_mode(cls, value: Any) -> Any:
        """``off``, ``read_only``, ... -> ``{"mode": ...}``."""
        return {"mode": value} if value is False or isinstance(value, str) else value


class EngineSettings(_Section):
    """One named engine: its type and the parameters it is built with."""

    type: InferenceEngineType
    model: ModelParams = ModelParams()
    generation: GenerationParams = GenerationParams()
    remote_params: RemoteParams | None = None
    #: on first load, ask a known question and refuse the engine if it answers wrongly
    self_check: bool = False
    cache: CacheSettings | None = None  # an exact response cache for this engine
    #: USD per million input/output tokens (cloud) or per second of wall time (local)
    price: Price = Price()

    @field_validator("type", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class CircuitBreakerSettings(_Section):
    failure_threshold: int = Field(default=5, ge=1)  # consecutive failures that open it
    cooldown_s: float = Field(default=30.0, ge=0)  # open this long, then one trial call


FallbackOn = Literal["unavailable", "retryable", "fatal", "invalid_output"]


class ChainSettings(_Section):
    """Engines tried in order. Written as a plain list or as this mapping.

    A member may also name another chain, whose engines take its place
    (``default: [local, openai]`` with ``local: [local_vllm, local_llamacpp]``).
    """

    engines: list[str] = Field(min_length=1)
    fallback_on: list[FallbackOn] = ["unavailable", "retryable"]
    max_attempts: int | None = Field(default=None, ge=1)  # total, across engines; None = one each
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    cache: CacheSettings | None = None  # for this chain's engines (over theirs)

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


class BudgetSettings(_Section):
    """The gateway's spend caps, in USD per API key per UTC day (``server/budgets.py``).
    A key is named by the variable that holds it, never by its value.

        budgets: {per_key_per_day: 5.0, keys: {TEAM_A_KEY: 20.0}}
    """

    #: every key's cap (without keys: the whole server's); None = no cap
    per_key_per_day: float | None = Field(default=None, ge=0)
    #: caps of single keys, by their variable (one of ``server.api_key_env_varnames``)
    keys: dict[str, Annotated[float, Field(ge=0)]] = {}


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key_env_varnames: list[str] = []  # each names a variable holding one accepted bearer key
    allow_unauthenticated_public: bool = False  # bind non-loopback without keys only if set
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)  # in-flight requests; beyond: 429 + Retry-After
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    workers: int = Field(default=1, ge=1)  # processes serving one port (SO_REUSEPORT)
    budgets: BudgetSettings = BudgetSettings()  # spend caps per API key per day

    @model_validator(mode="after")
    def _budgets_name_keys(self) -> ServerSettings:
        unknown = sorted(set(self.budgets.keys) - set(self.api_key_env_varnames))
        if unknown:
            raise ValueError(f"budgets.keys names {unknown[0]!r}, which is not one of "
                             "server.api_key_env_varnames")
        return self


class StateSettings(_Section):
    """Where gateway replicas share circuit breakers and rate limits: ``memory`` (each
    process alone) or ``redis`` (``server/state.py``).

        state: {backend: redis, url: "${REDIS_URL}"}
    """

    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None  # redis://[:password@]host:port/db
    prefix: str = "inferline:"  # redis: key prefix (deployments sharing one Redis differ here)

    @model_validator(mode="after")
    def _url_for_redis(self) -> StateSettings:
        if self.backend == "redis" and not self.url:
            raise ValueError("backend redis needs a url (redis://host:port/db)")
        return self


class InferlineSettings(_Section):
    """The resolved settings of one deployment (profile)."""

    env: str = "dev"
    log: LogSettings = LogSettings()
    engines: dict[str, EngineSettings] = {}
    chains: dict[str, ChainSettings] = {}
    pipelines: PipelineSettings = PipelineSettings()
    server: ServerSettings = ServerSettings()
    state: StateSettings = StateSettings()  # what gateway replicas share
    #: record every engine exchange into ``replay_cassette``, or serve them from it
    #: (``engines/replay.py``): ``INFERLINE_REPLAY=record``; two flat keys, so a variable
    #: for one keeps the other from the settings file
    replay: Annotated[Literal["off", "record", "replay"], BeforeValidator(_off)] = "off"
    replay_cassette: str = "inferline.cassette.jsonl"  # JSONL; INFERLINE_REPLAY_CASSETTE

    @model_validator(mode="after")
    def _chains_name_engines(self) -> InferlineSettings:
        for chain_name, chain in self.chains.items():
            if len(set(chain.engines)) != len(chain.engines):
                raise ValueError(f"chain {chain_name!r} lists an engine twice")
            expand_chain(chain_name, self.chains, self.engines)
        return self


def expand_chain(name: str, chains: Mapping[str, Any], engines: Collection[str],
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
