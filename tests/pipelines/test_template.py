"""Prompt templates run sandboxed: no way out to Python internals, no mutation of row data."""

from __future__ import annotations

import pytest

from inferline.errors import ConfigurationError, TemplateError
from inferline.pipelines.template import PromptTemplate

ESCAPES = [
    "{{ country.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ country|attr('__class__') }}",
    "{{ tags.append('x') }}",  # the immutable sandbox refuses to change row data
    "{{ meta.update(a=1) }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_escape_attempts_fail_with_a_template_error(source: str) -> None:
    template = PromptTemplate(source, name="steps.0.template.user")
    row = {"country": "France", "tags": ["a"], "meta": {}}
    with pytest.raises(TemplateError, match="steps.0.template.user: .*(unsafe|not safely)"):
        template.render(row)
    assert row == {"country": "France", "tags": ["a"], "meta": {}}


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
