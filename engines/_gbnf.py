"""Guided decoding as llama.cpp grammars (GBNF): text that fully matches a regex, or one of
a list of choices. JSON schemas go through llama-cpp-python's own converter.

    >>> regex_gbnf(r"[A-Z][a-z]+ is \\d{1,3}")
    'root ::= [A-Z] [a-z]+ " is " [0-9]{1,3}'
    >>> choice_gbnf(["yes", 'say "no"'])
    'root ::= "yes" | "say \\\\x22no\\\\x22"'

The regex is read by Python's own parser (so its meaning is Python's); what a grammar
cannot say (lookarounds, back-references) is a ``ValueError`` naming it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

_WORDY = re.compile(r"[A-Za-z0-9 ]")
_CATEGORIES = {  # \d \w \s, as character-class bodies
    sre.CATEGORY_DIGIT: "0-9", sre.CATEGORY_WORD: "a-zA-Z0-9_",
    sre.CATEGORY_SPACE: " \\t\\n\\r\\x0b\\x0c"}
_NEGATED = {sre.CATEGORY_NOT_DIGIT: sre.CATEGORY_DIGIT, sre.CATEGORY_NOT_WORD: sre.CATEGORY_WORD,
            sre.CATEGORY_NOT_SPACE: sre.CATEGORY_SPACE}


def _char(code: int, *, quoted: bool) -> str:
    """One code point inside a GBNF literal or class; all but letters, digits (and space in
    a literal) are hex escapes, so nothing can end the literal or class early."""
    c = chr(code)
    if _WORDY.match(c) and (quoted or c != " "):
        return c
    return f"\\x{code:02x}" if code < 0x100 else (
        f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def literal(text: str) -> str:
    return '"' + "".join(_char(ord(c), quoted=True) for c in text) + '"'


def choice_gbnf(choices: Sequence[str]) -> str:
    return "root ::= " + " | ".join(literal(c) for c in choices)


def regex_gbnf(pattern: str) -> str:
    """A grammar for text that fully matches ``pattern`` (``re.fullmatch``)."""
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return "root ::= " + _seq(list(parsed))


def _seq(items: list[tuple[Any, Any]]) -> str:
    parts: list[str] = []
    for plain, run in itertools.groupby(items, key=lambda item: item[0] is sre.LITERAL):
        if plain:  # runs of plain characters become one literal
            parts.append(literal("".join(chr(av) for _, av in run)))
        else:
            parts += [part for op, av in run if (part := _item(op, av))]
    return " ".join(parts) or '""'


def _item(op: Any, av: Any) -> str:
    if op is sre.NOT_LITERAL:
        return f"[^{_char(av, quoted=False)}]"
    if op is sre.ANY:
        return "[^\\x0a]"
    if op is sre.IN:
        return _class(av)
    if op is sre.AT:
        if av in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING, sre.AT_END, sre.AT_END_STRING):
            return ""  # the whole output matches anyway
        raise ValueError(f"unsupported anchor {av}")
    if op is sre.SUBPATTERN:
        group = list(av[-1])
        return _item(*group[0]) if len(group) == 1 and group[0][0] is sre.BRANCH else (
            f"({_seq(group)})")
    if op is sre.BRANCH:
        return "(" + " | ".join(_seq(list(b)) for b in av[1]) + ")"
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", None)):
        low, high, body = av
        inner = _seq(list(body)) if len(body) == 1 else f"({_seq(list(body))})"
        if high is sre.MAXREPEAT:
            return inner + ("*" if low == 0 else "+" if low == 1 else f"{{{low},}}")
        if (low, high) == (0, 1):
            return inner + "?"
        return inner + (f"{{{low}}}" if low == high else f"{{{low},{high}}}")
    raise ValueError(f"{str(op).lower()} cannot be expressed as a grammar")


def _class(items: list[tuple[Any, Any]]) -> str:
    negate = bool(items) and items[0][0] is sre.NEGATE
    body = []
    for op, av in items[1:] if negate else items:
        if op is sre.LITERAL:
            body.append(_char(av, quoted=False))
        elif op is sre.RANGE:
            body.append(f"{_char(av[0], quoted=False)}-{_char(av[1], quoted=False)}")
        elif op is sre.CATEGORY and av in _CATEGORIES:
            body.append(_CATEGORIES[av])
        elif op is sre.CATEGORY and av in _NEGATED and len(items) == 1:
            return f"[^{_CATEGORIES[_NEGATED[av]]}]"
        else:
            raise ValueError(f"character class item {op} {av} cannot be expressed as a grammar")
    return f"[{'^' if negate else ''}{''.join(body)}]"
