"""A pipeline's declaration: what a YAML file says, or what ``PipelineBuilder`` builds.

    name: capital-quiz
    input: {fields: [country]}
    steps:
      - template: {system: You answer in one word., user: "What is the capital of {{ country }}?"}
      - generate: {chain: default, generation: {max_new_tokens: 16}}
      - postprocess: [strip, {regex: {pattern: "([A-Z][a-z]+)", group: 1}}]
    output: answer

    spec = PipelineSpec.from_yaml("capital-quiz.yaml")       # ConfigurationError: file:line: key
    spec == (PipelineBuilder("capital-quiz", fields=["country"])
             .template("What is the capital of {{ country }}?", system="You answer in one word.")
             .generate(chain="default", generation={"max_new_tokens": 16})
             .postprocess("strip", {"regex": {"pattern": "([A-Z][a-z]+)", "group": 1}})
             .build(output="answer"))

Only the shape is checked here; ``Pipeline`` checks what needs settings (chains,
engines, template variables, allowed modules).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from inferline.core.configs import GenerationParams
from inferline.errors import ConfigurationError
from inferline.settings.loader import Lines, read_yaml, validation_error
from inferline.settings.model import CacheSettings

_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # a field name a template can use


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _one_of(model: BaseModel, names: tuple[str, ...], what: str) -> None:
    if sum(getattr(model, n) is not None for n in names) != 1:
        raise ValueError(f"{what} needs exactly one of: {', '.join(names)}")


class InputSpec(_Spec):
    #: each row must have these; templates may use only these (and outputs)
    fields: list[Annotated[str, Field(pattern=_NAME)]] = []


class TemplateSpec(_Spec):
    """The prompt for the next generate step (Jinja2, sandboxed, undefined names are errors)."""

    user: str
    system: str | None = None


class GenerateSpec(_Spec):
    """One engine call through a named chain, or an inline list of engines and chains."""

    chain: str | None = None
    engines: list[str] | None = Field(default=None, min_length=1)
    generation: GenerationParams = GenerationParams()
    output: str | None = Field(default=None, pattern=_NAME)  # default: the pipeline's output
    #: this step's response cache, over its chain's and engines' (``cache: off``, ``read_only``)
    cache: CacheSettings | None = None

    @model_validator(mode="after")
    def _target(self) -> GenerateSpec:
        _one_of(self, ("chain", "engines"), "generate")
        return self


class Options(_Spec):
    """A post-processor that takes no options (``- strip``)."""


class RegexSpec(_Spec):
    pattern: str
    group: int | str = 0
    flags: list[Literal["IGNORECASE", "MULTILINE", "DOTALL"]] = []

    @model_validator(mode="after")
    def _compiles(self) -> RegexSpec:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return self


class JsonSchemaSpec(_Spec):
    json_schema: dict[str, Any] = Field(alias="schema")
    reask: int = Field(default=0, ge=0, le=5)  # ask the same chain again this many times
    constrain: bool = False  # engines that can (llama.cpp, vLLM, OpenAI) answer to the schema

    @model_validator(mode="after")
    def _valid_schema(self) -> JsonSchemaSpec:
        import jsonschema

        try:
            jsonschema.validators.validator_for(self.json_schema).check_schema(self.json_schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"invalid JSON schema: {exc.message}") from None
        return self


class ChoiceSpec(_Spec):
    """Map the answer onto one option: a list keeps the option, a mapping gives its value."""

    options: list[str] | dict[str, Any] = Field(min_length=1)
    default: Any = None  # when nothing matches; without it, no match is an invalid output
    reask: int = Field(default=0, ge=0, le=5)
    constrain: bool = False  # engines that can (llama.cpp, vLLM) answer one option exactly


class CallableSpec(_Spec):
    """``module.function(value, **args)``; the module must be allowed by the settings."""

    path: str = Field(pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")
    args: dict[str, Any] = {}


_BARE = ("strip", "lower", "upper", "json")


class ProcessorSpec(_Spec):
    """One post-processor: a bare name (``strip``) or a one-key mapping with options."""

    strip: Options | None = None
    lower: Options | None = None
    upper: Options | None = None
    json_parse: Options | None = Field(default=None, alias="json")
    regex: RegexSpec | None = None
    json_schema: JsonSchemaSpec | None = None
    choice: ChoiceSpec | None = None
    callable: CallableSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {value: None}
        if isinstance(value, dict):
            value = {k: {} if v is None and k in _BARE else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one(self) -> ProcessorSpec:
        _one_of(self, tuple(type(self).model_fields), "a post-processor")
        return self

    @property
    def kind(self) -> str:
        """The processor's name as written (``json``, not ``json_parse``)."""
        name = next(n for n, v in self if v is not None)
        return type(self).model_fields[name].alias or name

    @property
    def options(self) -> Any:
        return next(v for _, v in self if v is not None)


class StepSpec(_Spec):
    template: TemplateSpec | None = None
    generate: GenerateSpec | None = None
    postprocess: list[ProcessorSpec] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> StepSpec:
        _one_of(self, ("template", "generate", "postprocess"), "a step")
        return self

    @property
    def kind(self) -> str:
        return next(n for n, v in self if v is not None)


class PipelineSpec(_Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    input: InputSpec = InputSpec()
    steps: list[StepSpec] = Field(min_length=1)
    output: str = Field(default="output", pattern=_NAME)

    _file: str | None = PrivateAttr(default=None)
    _lines: Lines = PrivateAttr(default_factory=dict)

    def __eq__(self, other: object) -> bool:  # where it was read from does not count
        return isinstance(other, PipelineSpec) and self.model_dump() == other.model_dump()

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineSpec:
        lines: Lines = {}
        return cls.from_dict(read_yaml(path, lines), file=str(path), lines=lines)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str | None = None,
                  lines: Lines | None = None) -> PipelineSpec:
        try:
            spec = cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc, lines or {}, cls, file=file) from None
        spec._file, spec._lines = file, lines or {}
        return spec

    def error(self, message: str, *path: str | int, hint: str | None = None) -> ConfigurationError:
        """A ``ConfigurationError`` at ``path`` (e.g. ``"steps", 1, "generate", "chain"``)."""
        keys = tuple(str(p) for p in path)
        line = next((self._lines[keys[:i]][1] for i in range(len(keys), 0, -1)
                     if keys[:i] in self._lines), None)
        return ConfigurationError(message, file=self._file, line=line, key=".".join(keys) or None,
                                  hint=hint)


class PipelineBuilder:
    """Python for the same ``PipelineSpec`` a YAML file gives; each call adds one step."""

    def __init__(self, name: str, *, fields: list[str] | tuple[str, ...] = (),
                 description: str = "") -> None:
        self._data: dict[str, Any] = {"name": name, "description": description,
                                      "input": {"fields": list(fields)}, "steps": []}

    def template(self, user: str, *, system: str | None = None) -> PipelineBuilder:
        return self._step("template", {"user": user, "system": system})

    def generate(self, chain: str | None = None, *, engines: list[str] | None = None,
                 generation: dict[str, Any] | None = None,
                 output: str | None = None) -> PipelineBuilder:
        return self._step("generate", {"chain": chain, "engines": engines,
                                       "generation": generation or {}, "output": output})

    def postprocess(self, *processors: str | dict[str, Any]) -> PipelineBuilder:
        return self._step("postprocess", list(processors))

    def _step(self, kind: str, body: Any) -> PipelineBuilder:
        self._data["steps"].append({kind: body})
        return self

    def build(self, output: str = "output") -> PipelineSpec:
        return PipelineSpec.from_dict({**self._data, "output": output})
