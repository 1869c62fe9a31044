"""Typed parameters, with the seed's (Oumi's) field names. Unknown keys are errors.

    ModelParams(model_name="smollm2-135m", model_kwargs={"n_ctx": 2048})
    RemoteParams(api_url="http://localhost:8000/v1/chat/completions", num_workers=8)
    GenerationParams(max_new_tokens=64, temperature=0.0)
"""

from __future__ import annotations

import functools
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Params(BaseModel):
    """Mutable defaults are factories: pydantic deep-copies a plain ``{}`` per instance."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class InferenceEngineType(str, Enum):
    NATIVE = "NATIVE"
    VLLM = "VLLM"
    LLAMACPP = "LLAMACPP"
    REMOTE_VLLM = "REMOTE_VLLM"
    REMOTE = "REMOTE"
    OPENAI = "OPENAI"
    ANTHROPIC = "ANTHROPIC"
    GOOGLE_GEMINI = "GOOGLE_GEMINI"
    GOOGLE_VERTEX = "GOOGLE_VERTEX"
    PARASAIL = "PARASAIL"


class ModelParams(_Params):
    """Which model, and backend-specific loading options in ``model_kwargs``.

    ``model_name`` is a local path, a packaged model's short name (``inferline
    models``), or a hub id. Each engine checks ``model_kwargs`` against its own
    typed options, so a misspelt key fails with the key named.
    """

    model_name: str | None = None
    tokenizer_name: str | None = None
    model_max_length: int | None = Field(default=None, gt=0)
    torch_dtype_str: str = "auto"
    device_map: str | None = "auto"
    trust_remote_code: bool = False
    chat_template: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    tokenizer_kwargs: dict[str, Any] = Field(default_factory=dict)


class RemoteParams(_Params):
    """Where a remote engine sends requests and how hard it pushes.

    ``api_url`` is the full endpoint (``.../v1/chat/completions``) or a base URL
    ending in ``/v1``. The API key is never stored: ``api_key_env_varname`` names
    the environment variable read at call time.
    """

    api_url: str | None = None
    api_key_env_varname: str | None = None
    max_retries: int = Field(default=3, ge=0)
    retry_backoff_base: float = Field(default=1.0, ge=0)
    retry_backoff_max: float = Field(default=30.0, ge=0)
    connection_timeout: float = Field(default=300.0, gt=0)  # whole request, seconds
    connect_timeout: float = Field(default=10.0, gt=0)  # TCP connect only
    num_workers: int = Field(default=1, ge=1)
    politeness_policy: float = Field(default=0.0, ge=0)  # seconds a worker waits between calls
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)


class GuidedDecodingParams(_Params):
    """Constrain output: exactly one of a JSON schema, a regex or a list of choices."""

    json_schema: dict[str, Any] | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    #: False: an engine that cannot constrain answers unconstrained, instead of refusing the
    #: request (a pipeline's ``constrain: true``, where validation and re-asks stay the net)
    required: bool = True

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one(self) -> GuidedDecodingParams:
        if sum(v is not None for v in (self.json_schema, self.regex, self.choice)) != 1:
            raise ValueError("set exactly one of json, regex, choice")
        return self


class ToolSpec(_Params):
    """A function the model may call: its name, what it does, and a JSON schema of its
    arguments (OpenAI's ``function``; Anthropic's ``input_schema``)."""

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    strict: bool | None = None  # OpenAI's: arguments must follow ``parameters`` exactly


#: tool_choice values that name no function (any other value names the function to call)
TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})


class GenerationParams(_Params):
    """Sampling. Defaults mean "not asked for"; engines refuse non-defaults they can't honour.

    ``tools`` (with ``tool_choice``: "auto", "none", "required", or the name of the tool
    to call) go only to engines that can call tools (``can_call_tools``); others refuse
    the request, and a chain moves on.
    """

    max_new_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int | None = Field(default=None, gt=0)
    min_p: float = Field(default=0.0, ge=0, le=1)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop_strings: list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    logit_bias: dict[str, float] = Field(default_factory=dict)
    guided_decoding: GuidedDecodingParams | None = None
    skip_special_tokens: bool = True
    # local engines: conversations per forward batch
    batch_size: int | None = Field(default=None, gt=0)
    tools: list[ToolSpec] | None = None
    tool_choice: str | None = None

    @model_validator(mode="after")
    def _tool_choice(self) -> GenerationParams:
        choice = self.tool_choice
        if choice is not None and choice not in TOOL_CHOICE_MODES and (
                choice not in {t.name for t in self.tools or ()}):
            raise ValueError(f"tool_choice {choice!r} names no tool in tools")
        return self

    def non_default(self) -> dict[str, Any]:
        """The fields set to something other than their default."""
        return {name: value for name, default in _defaults(type(self)).items()
                if (value := getattr(self, name)) != default}


class InferenceConfig(_Params):
    """Everything ``inferline infer`` needs: engine, model, generation, remote params, files."""

    model: ModelParams = Field(default_factory=ModelParams)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    remote_params: RemoteParams | None = None
    engine: InferenceEngineType | None = None
    input_path: str | None = None
    output_path: str | None = None


@functools.cache
def _defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """Each field's default, made once (they are compared, never handed out)."""
    return {name: field.get_default(call_default_factory=True)
            for name, field in cls.model_fields.items()}
