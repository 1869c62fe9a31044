"""Post-processors: small callables, ``value -> value``, that raise ``OutputValidationError``.

    strip, lower, upper        text clean-up
    json                       parse JSON (also inside a ```json fence or surrounding prose)
    regex                      extract a group; no match is invalid output
    json_schema                validate (parsing first if still text); may re-ask the chain
    choice                     map the answer onto one of a list (or mapping) of options
    callable                   module.function(value, **args), from allowed modules only

    processor = build_processor(spec, allowed_modules=["myproject.post"],
                                name="steps.2.postprocess.0")
    processor("  Paris ")
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from inferline.errors import ConfigurationError, OutputValidationError
from inferline.pipelines.spec import (
    CallableSpec,
    ChoiceSpec,
    JsonSchemaSpec,
    ProcessorSpec,
    RegexSpec,
)

Processor = Callable[[Any], Any]
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class _Base:
    def __init__(self, name: str) -> None:
        self.name = name

    def invalid(self, message: str, value: Any) -> OutputValidationError:
        return OutputValidationError(message, step=self.name, output=str(value)[:500])

    def text(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.invalid(f"expects text, got {type(value).__name__}", value)
        return value


class TextMethod(_Base):
    """``strip``, ``lower``, ``upper``: that ``str`` method, on text only."""

    def __init__(self, name: str, method: str) -> None:
        super().__init__(name)
        self.method: Callable[[str], str] = getattr(str, method)

    def __call__(self, value: Any) -> str:
        return self.method(self.text(value))


class JsonParse(_Base):
    """The JSON value in the text: the whole text, a fenced block, or the first {...}/[...]."""

    def __call__(self, value: Any) -> Any:
        text = self.text(value).strip()
        if fenced := _FENCE.search(text):
            text = fenced.group(1).strip()
        try:
            return json.loads(text)
        except ValueError:
            pass
        start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
        if start >= 0:
            try:
                return json.JSONDecoder().raw_decode(text[start:])[0]
            except ValueError:
                pass
        raise self.invalid("no JSON value found in the output", value)


class Regex(_Base):
    def __init__(self, name: str, spec: RegexSpec) -> None:
        super().__init__(name)
        flags = 0
        for flag in spec.flags:
            flags |= getattr(re, flag)
        self.pattern, self.group = re.compile(spec.pattern, flags), spec.group
        if isinstance(self.group, int) and self.group > self.pattern.groups:
            raise ConfigurationError(f"group {self.group} but the pattern has "
                                     f"{self.pattern.groups} group(s)", key="regex.group")

    def __call__(self, value: Any) -> str:
        match = self.pattern.search(self.text(value))
        if match is None:
            raise self.invalid(f"no match for /{self.pattern.pattern}/", value)
        return match.group(self.group)


class JsonSchema(_Base):
    def __init__(self, name: str, spec: JsonSchemaSpec) -> None:
        import jsonschema

        super().__init__(name)
        self.validator = jsonschema.validators.validator_for(spec.json_schema)(spec.json_schema)
        self.parse = JsonParse(name)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            value = self.parse(value)
        error = next(iter(self.validator.iter_errors(value)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path)
            raise self.invalid(f"does not match the schema{f' at {where}' if where else ''}: "
                               f"{error.message}", value)
        return value


class Choice(_Base):
    """Exact match first (case and surrounding punctuation ignored), else the option that
    appears earliest in the text as a whole word."""

    _MISSING = object()

    def __init__(self, name: str, spec: ChoiceSpec) -> None:
        super().__init__(name)
        options = spec.options
        self.values = options if isinstance(options, dict) else {o: o for o in options}
        self.default = spec.default if "default" in spec.model_fields_set else self._MISSING
        self.words = {o: re.compile(rf"\b{re.escape(o)}\b", re.IGNORECASE) for o in self.values}

    def __call__(self, value: Any) -> Any:
        text = self.text(value)
        bare = text.strip().strip(".!?\"'`*").strip().lower()
        for option, mapped in self.values.items():
            if option.lower() == bare:
                return mapped
        found = [(m.start(), o) for o, rx in self.words.items() if (m := rx.search(text))]
        if found:
            return self.values[min(found)[1]]
        if self.default is not self._MISSING:
            return self.default
        raise self.invalid(f"none of the options {list(self.values)} found", value)


class Call(_Base):
    def __init__(self, name: str, spec: CallableSpec, allowed_modules: Sequence[str]) -> None:
        super().__init__(name)
        module_name, _, attr = spec.path.rpartition(".")
        if not any(module_name == m or module_name.startswith(m + ".") for m in allowed_modules):
            allowed = ", ".join(allowed_modules) or "none"
            raise ConfigurationError(f"module {module_name!r} is not in "
                                     f"pipelines.allowed_modules (allowed: {allowed})",
                                     key="callable.path")
        try:
            self.function = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"cannot import {spec.path}: {exc}",
                                     key="callable.path") from None
        self.args = spec.args

    def __call__(self, value: Any) -> Any:
        try:
            return self.function(value, **self.args)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise self.invalid(f"{type(exc).__name__}: {exc}", value) from exc


def build_processor(spec: ProcessorSpec, *, name: str,
                    allowed_modules: Sequence[str] = ()) -> Processor:
    kind = spec.kind
    if kind in ("strip", "lower", "upper"):
        return TextMethod(name, kind)
    if kind == "json":
        return JsonParse(name)
    if kind == "callable":
        return Call(name, spec.options, allowed_modules)
    configured: dict[str, Callable[[str, Any], Processor]] = {
        "regex": Regex, "json_schema": JsonSchema, "choice": Choice}
    return configured[kind](name, spec.options)
