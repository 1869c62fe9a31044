"""Prompt templates run sandboxed: no way out to Python internals, no mutation of row data."""

from __future__ import annotations

import pytest

from inferline.errors import ConfigurationError, TemplateError
from inferline.pipelines.template import PromptTemplate

ESCAPES = [
    "{{ country.__class__.__mro__[1].__subclasses__() }}",
    "{{ country.upper.__globals__ }}",
    "{{ tags.__class__.__base__ }}",
    "{{ (cycler, country)[0].__init__.__globals__ }}",
    "{{ country|attr('__class__') }}",
    "{{ tags.append('x') }}",  # the immutable sandbox refuses to change row data
    "{{ meta.update(a=1) }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_escape_attempts_fail_with_a_template_error(source: str) -> None:
    template = PromptTemplate(source, name="steps.0.template.user")
    row = {"country": "France", "tags": ["a"], "meta": {}}
    with pytest.raises(TemplateError,
                       match="steps.0.template.user: .*(unsafe|not safely|no attribute)"):
        template.render(row)
    assert row == {"country": "France", "tags": ["a"], "meta": {}}


@pytest.mark.parametrize("source", ["{{ ''.__class__.__mro__ }}",
                                    "{{ cycler.__init__.__globals__ }}",
                                    "{{ lipsum.__globals__['os'] }}", "{{ (1).__class__ }}"])
def test_escape_in_a_template_without_variables_fails_when_compiled(source: str) -> None:
    with pytest.raises(ConfigurationError, match="unsafe"):
        PromptTemplate(source, name="t")


def test_ordinary_jinja_renders() -> None:
    template = PromptTemplate("{% for t in tags %}{{ loop.index }}. {{ t|upper }}\n{% endfor %}"
                              "{{ country.lower() }}", name="t")
    assert template.variables == {"tags", "country"}
    assert template.render({"tags": ["a", "b"], "country": "France"}) == "1. A\n2. B\nfrance"


def test_undefined_name_at_render_is_a_template_error() -> None:
    template = PromptTemplate("{{ row.missing }}", name="t")
    with pytest.raises(TemplateError, match="has no attribute 'missing'"):
        template.render({"row": {}})


def test_syntax_error_names_the_template_line() -> None:
    with pytest.raises(ConfigurationError, match="template line 2: unexpected '}'"):
        PromptTemplate("line one\n{{ x }", name="t")


@pytest.mark.parametrize("source", ["What is the capital of {{ country }}?", "{{country}}{{ n }}",
                                    "a {{ n }} b {{ none }} c {{ tags }}", "no variables"])
def test_plain_substitutions_render_exactly_as_jinja(source: str) -> None:
    from jinja2 import Environment, StrictUndefined

    values = {"country": "Peru", "n": 3, "none": None, "tags": ["a", 1]}
    expected = Environment(undefined=StrictUndefined).from_string(source).render(values)
    assert PromptTemplate(source, name="t").render(values) == expected
    with pytest.raises(TemplateError, match="'country' is undefined"):
        PromptTemplate("{{ country }}", name="t").render({})
