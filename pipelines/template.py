"""Prompt templates: Jinja2 in an immutable sandbox, compiled once, undefined names are errors.

    >>> t = PromptTemplate("What is the capital of {{ country }}?", name="steps.0.template.user")
    >>> t.variables        # checked against the declared fields before any call
    frozenset({'country'})
    >>> t.render({"country": "France"})
    'What is the capital of France?'

A pipeline adds its file and line to a syntax error's ``ConfigurationError``.
A template cannot reach Python internals (``{{ x.__class__ }}`` is a ``TemplateError``)
nor change the values it is given. A template without variables is rendered once, when
compiled, so its errors are ``ConfigurationError``s there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2 import TemplateError as JinjaError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferline.errors import ConfigurationError, TemplateError

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class PromptTemplate:
    def __init__(self, source: str, *, name: str) -> None:
        self.name = name
        try:
            ast = _ENV.parse(source)
        except TemplateSyntaxError as exc:
            message = f"template syntax error at template line {exc.lineno}: {exc.message}"
            raise ConfigurationError(message) from None
        self.variables: frozenset[str] = frozenset(meta.find_undeclared_variables(ast))
        self._parts = _substitutions(ast)
        self._template = _ENV.from_string(ast)
        # a ChainMap by default, walked twice per render: as a dict, rendering is 3x faster
        self._template.globals = dict(self._template.globals)
        self._constant: str | None = None
        if not self.variables:  # e.g. a fixed system prompt: rendered once, here
            try:
                self._constant = self._render({})
            except TemplateError as exc:
                raise ConfigurationError(str(exc)) from None

    def render(self, values: Mapping[str, Any]) -> str:
        return self._render(values) if self._constant is None else self._constant

    def _render(self, values: Mapping[str, Any]) -> str:
        if self._parts is not None:  # text and {{ name }} only: what Jinja would output
            try:
                return "".join(text if name is None else str(values[name])
                               for name, text in self._parts)
            except KeyError as exc:
                raise TemplateError(f"{self.name}: {exc.args[0]!r} is undefined") from None
        try:
            return self._template.render(values)
        except JinjaError as exc:
            raise TemplateError(f"{self.name}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:  # raised by filters
            raise TemplateError(f"{self.name}: {type(exc).__name__}: {exc}") from None


def _substitutions(ast: nodes.Template) -> list[tuple[str | None, str]] | None:
    """``[(None, text) | (name, "")]`` for a template of plain text and ``{{ name }}``
    only (most prompts), which renders without a Jinja context; None for anything else."""
    if not all(isinstance(n, nodes.Output) for n in ast.body):
        return None
    parts: list[tuple[str | None, str]] = []
    for node in (n for out in ast.body for n in out.nodes):  # type: ignore[attr-defined]
        if isinstance(node, nodes.TemplateData):
            parts.append((None, node.data))
        elif isinstance(node, nodes.Name) and node.name not in _ENV.globals:
            parts.append((node.name, ""))
        else:
            return None
    return parts
