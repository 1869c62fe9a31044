"""Prompt templates: Jinja2 in an immutable sandbox, compiled once, undefined names are errors.

    t = PromptTemplate("What is the capital of {{ country }}?", where=spec_error_factory)
    t.variables            # {"country"}: checked against the declared fields before any call
    t.render({"country": "France"})

A template cannot reach Python internals (``{{ x.__class__ }}`` is a ``TemplateError``)
nor change the values it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2 import TemplateError as JinjaError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferline.errors import ConfigurationError, TemplateError

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                     keep_trailing_newline=False)


class PromptTemplate:
    def __init__(self, source: str, *, name: str,
                 error: Callable[[str], ConfigurationError] = ConfigurationError) -> None:
        """``error(message)`` builds the ConfigurationError for a syntax error (with file/line)."""
        self.source, self.name = source, name
        try:
            ast = _ENV.parse(source)
        except TemplateSyntaxError as exc:
            raise error(f"template syntax error at template line {exc.lineno}: {exc.message}") \
                from None
        self.variables: frozenset[str] = frozenset(meta.find_undeclared_variables(ast))
        self._template = _ENV.from_string(ast)

    def render(self, values: Mapping[str, Any]) -> str:
        try:
            return self._template.render(values)
        except JinjaError as exc:
            raise TemplateError(f"{self.name}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:  # raised by filters
            raise TemplateError(f"{self.name}: {type(exc).__name__}: {exc}") from None
