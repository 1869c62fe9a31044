"""Post-processors: what each does to an answer, and how each rejects one."""

from __future__ import annotations

from typing import Any

import pytest

from inferline.errors import ConfigurationError, OutputValidationError
from inferline.pipelines.postprocess import build_processor
from inferline.pipelines.spec import ProcessorSpec


def run(spec: Any, value: Any, allowed: tuple[str, ...] = ()) -> Any:
    processor = build_processor(ProcessorSpec.model_validate(spec), name="p",
                                allowed_modules=allowed)
    return processor(value)


@pytest.mark.parametrize(("spec", "value", "expected"), [
    ("strip", "  Paris \n", "Paris"),
    ("lower", "Paris", "paris"),
    ("upper", "Paris", "PARIS"),
    ("json", '{"a": 1}', {"a": 1}),
    ("json", 'Sure! ```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
    ("json", 'Here it is: {"a": 1} -- hope it helps', {"a": 1}),
    ({"regex": {"pattern": r"capital is (\w+)", "group": 1}}, "The capital is Paris.", "Paris"),
    ({"regex": {"pattern": "paris", "flags": ["IGNORECASE"]}}, "PARIS!", "PARIS"),
    ({"json_schema": {"schema": {"type": "object", "required": ["city"]}}}, '{"city": "Rome"}',
     {"city": "Rome"}),
    ({"choice": {"options": ["yes", "no"]}}, "No.", "no"),
    ({"choice": {"options": ["yes", "no"]}}, "I think the answer is yes, because", "yes"),
    ({"choice": {"options": {"positive": 1, "negative": 0}}}, "Negative", 0),
    ({"choice": {"options": ["yes", "no"], "default": "unsure"}}, "maybe", "unsure"),
    ({"callable": {"path": "json.dumps", "args": {"sort_keys": True}}}, {"b": 1, "a": 2},
     '{"a": 2, "b": 1}'),
])
def test_processor_output(spec: Any, value: Any, expected: Any) -> None:
    assert run(spec, value, allowed=("json",)) == expected


@pytest.mark.parametrize(("spec", "value", "message"), [
    ("json", "no json here", "no JSON value found"),
    ({"regex": {"pattern": r"capital is (\w+)", "group": 1}}, "I don't know", "no match"),
    ({"json_schema": {"schema": {"type": "object", "required": ["city"]}}}, '{"town": "Rome"}',
     "'city' is a required property"),
    ({"json_schema": {"schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}},
     '{"n": "x"}', "at n: 'x' is not of type 'integer'"),
    ({"choice": {"options": ["yes", "no"]}}, "maybe", "none of the options"),
    ("strip", {"a": 1}, "expects text, got dict"),
])
def test_processor_rejects_invalid_output(spec: Any, value: Any, message: str) -> None:
    with pytest.raises(OutputValidationError, match=message) as info:
        run(spec, value)
    assert info.value.step == "p"


def test_callable_outside_allowed_modules_is_refused_before_import() -> None:
    with pytest.raises(ConfigurationError, match="module 'os' is not in pipelines.allowed_modules"):
        run({"callable": {"path": "os.system"}}, "rm -rf /", allowed=("json", "osx"))
    with pytest.raises(ConfigurationError, match="cannot import json.nope"):
        run({"callable": {"path": "json.nope"}}, "x", allowed=("json",))
