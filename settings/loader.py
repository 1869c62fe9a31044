"""Layered settings, later wins:

packaged ``defaults.yaml`` -> ``profiles/<env>.yaml`` (``INFERLINE_ENV``, default ``dev``)
-> your ``--settings`` file -> ``.env`` -> ``INFERLINE_*`` variables (``__`` nests)
-> CLI overrides.

    settings = load_settings("deploy.yaml", overrides={"log": {"level": "DEBUG"}})

YAML values may say ``${VAR}`` or ``${VAR:-default}``. Every error is a
``ConfigurationError`` naming the file, line and key, or the ``INFERLINE_*`` variable or
override key that set the bad value. Files are bounded (``MAX_BYTES``, ``MAX_DEPTH``,
``MAX_NODES``), so a hostile one fails at once instead of hanging.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from inferline.errors import ConfigurationError
from inferline.settings.model import InferlineSettings, chain_members, expand_chain

PACKAGED = Path(__file__).parent
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Lines = dict[tuple[str, ...], tuple[str, int]]  # key path -> (file, line)


def _interpolate(text: str, file: str, line: int, key: str) -> str:
    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigurationError(f"environment variable {name} is not set", file=file, line=line,
                                 key=key)
    return _VAR.sub(sub, text)


MAX_BYTES = 1024 * 1024  # settings and pipeline files are a few KiB; this bounds parse time
MAX_DEPTH = 100  # nesting levels; the YAML composer recurses once per level
MAX_NODES = 50_000  # values once aliases are expanded: refuses "billion laughs" files


class _Composer(yaml.SafeLoader):
    """PyYAML's composer with nesting bounded, so deep input fails before the stack does."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} "
                                                  "levels", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _walk(node: yaml.Node, file: str, path: tuple[str, ...], lines: Lines,
          count: Iterator[int]) -> Any:
    line = node.start_mark.line + 1
    if next(count) > MAX_NODES:  # an alias (*name) repeats a node without new text
        raise ConfigurationError(f"more than {MAX_NODES} values once aliases are expanded",
                                 file=file, line=line, key=".".join(path))
    if len(path) > MAX_DEPTH:  # an alias inside its own anchor nests forever
        raise ConfigurationError(f"nested deeper than {MAX_DEPTH} levels", file=file, line=line)
    lines[path] = (file, line)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise ConfigurationError("a key must be a plain name, not a list or mapping",
                                         file=file, line=k.start_mark.line + 1)
            out[k.value] = _walk(v, file, (*path, k.value), lines, count)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, file, (*path, str(i)), lines, count) for i, v in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)  # the only other kind of node
    try:
        if "${" in node.value:
            text = _interpolate(node.value, file, line, ".".join(path))
            return text if node.style in ("'", '"') else yaml.safe_load(text)
        return yaml.constructor.SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError) as exc:  # an unknown !tag, a date like 2024-13-45
        raise ConfigurationError(f"invalid value: {getattr(exc, 'problem', None) or exc}",
                                 file=file, line=line, key=".".join(path)) from None


def _text(path: str | Path) -> str:
    """The file's text; a ``ConfigurationError`` when it is too large or not UTF-8."""
    file = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read file ({exc.strerror})", file=file) from exc
    if len(raw) > MAX_BYTES:
        raise ConfigurationError(f"file is larger than {MAX_BYTES // 1024} KiB", file=file)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        why = ("it looks like UTF-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff"))
               else f"byte 0x{raw[exc.start]:02x} at offset {exc.start}")
        raise ConfigurationError(f"file is not UTF-8 text ({why})", file=file,
                                 line=raw.count(b"\n", 0, exc.start) + 1) from None


def read_yaml(path: str | Path, lines: Lines) -> dict[str, Any]:
    """A YAML mapping with ``${VAR}`` resolved, recording each key's line in ``lines``."""
    file, text = str(path), _text(path)
    try:
        node = yaml.compose(text, Loader=_Composer)
    except yaml.reader.ReaderError as exc:  # NUL and other control characters: binary data
        raise ConfigurationError(f"file is not UTF-8 text (character #x{exc.character:04x})",
                                 file=file, line=text.count("\n", 0, exc.position) + 1) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigurationError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=file,
                                 line=mark.line + 1 if mark else None) from exc
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigurationError("top level must be a mapping", file=file, line=1)
    data: dict[str, Any] = _walk(node, file, (), lines, itertools.count(1))
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = (deep_merge(out[key], value)
                    if isinstance(value, dict) and isinstance(out.get(key), dict) else value)
    return out


class _Dict(PydanticBaseSettingsSource):
    def __init__(self, cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(cls)
        self.data = data

    def get_field_value(self, field: Any, name: str) -> tuple[Any, str, bool]:
        return self.data.get(name), name, False

    def __call__(self) -> dict[str, Any]:
        return self.data


def _resolved(files: dict[str, Any], overrides: dict[str, Any], dotenv: Path | None) -> Any:
    class Resolved(BaseSettings, InferlineSettings):
        model_config = SettingsConfigDict(env_prefix="INFERLINE_", env_nested_delimiter="__",
                                          env_file=dotenv, extra="forbid")

        @classmethod
        def settings_customise_sources(
                cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource,
                dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (_Dict(settings_cls, overrides), env_settings, dotenv_settings,
                    _Dict(settings_cls, files))
    return Resolved()


def validation_error(exc: ValidationError, lines: Lines, root: Any = InferlineSettings,
                     file: str | None = None) -> ConfigurationError:
    """A pydantic error as a ConfigurationError with file, line, dotted key and a name hint."""
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    file, line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines),
                      (file, None))  # the key's line, else its parent's (a missing key)
    hint = None
    if err["type"] == "extra_forbidden":
        hint = next(iter(difflib.get_close_matches(loc[-1], _known_keys(root, loc[:-1]), 1)), None)
    return ConfigurationError(err["msg"], file=file, line=line, key=".".join(loc) or None,
                              hint=hint)


def _known_keys(model: Any, path: tuple[str, ...]) -> list[str]:
    """Field names of the pydantic model found at ``path`` below ``model`` (dict keys and
    list indices skipped)."""
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is not None:
            model = _model_in(field.annotation) or model
    return list(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as ``list[Step] | None``, if any."""
    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in reversed(getattr(annotation, "__args__", ())):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _check_chains(data: dict[str, Any], lines: Lines) -> None:
    """Every chain member names an engine or another chain, and no chain contains itself."""
    engines, chains = data.get("engines") or {}, data.get("chains") or {}
    known = [*engines, *chains]
    for name, chain in chains.items():
        prefix = ("chains", name, "engines") if isinstance(chain, dict) else ("chains", name)
        for i, member in enumerate(chain_members(chain)):
            if member not in known:
                file, line = lines.get((*prefix, str(i)), (None, None))
                hint = next(iter(difflib.get_close_matches(str(member), known, 1)), None)
                raise ConfigurationError(f"chain {name!r} names unknown engine {member!r}",
                                         file=file, line=line, key=".".join((*prefix, str(i))),
                                         hint=hint)
        try:
            expand_chain(name, chains, engines)
        except ValueError as exc:
            file, line = lines.get(("chains", name), (None, None))
            raise ConfigurationError(str(exc), file=file, line=line, key=f"chains.{name}") from None


def _blamed(err: ConfigurationError, exc: ValidationError, overrides: dict[str, Any],
            dotenv: Path | None) -> ConfigurationError:
    """``err`` (located in YAML) moved to the layer that set the bad value, if a later one did:
    an override (named by its key), else an ``INFERLINE_*`` variable (named; in ``.env``, with
    its line)."""
    loc = tuple(str(p) for p in exc.errors()[0]["loc"])
    if _sets(overrides, loc):
        return ConfigurationError(err.message, key=err.key, hint=err.hint)
    if not loc or loc[0] not in InferlineSettings.model_fields:
        return err  # variables only ever set known sections (INFERLINE_DATA_DIR sets nothing)
    for name, (file, line) in _variables(dotenv).items():
        path = tuple(name.lower().removeprefix("inferline_").split("__"))
        if name.upper().startswith("INFERLINE_") and loc[:len(path)] == path:
            return ConfigurationError(err.message, file=file, line=line, key=name, hint=err.hint)
    return err


def _sets(data: Any, loc: tuple[str, ...]) -> bool:
    """Whether the nested dict ``data`` sets the value at ``loc``, or a whole value above it."""
    for part in loc:
        if not isinstance(data, dict):
            return True
        if part not in data:
            return False
        data = data[part]
    return bool(loc)


def _variables(dotenv: Path | None) -> dict[str, tuple[str | None, int | None]]:
    """Variable name -> where it is set: ``(file, line)`` in ``.env``, ``(None, None)`` for the
    environment, which wins."""
    found: dict[str, tuple[str | None, int | None]] = {}
    if dotenv is not None:
        for number, text in enumerate(dotenv.read_text(errors="replace").splitlines(), 1):
            name = text.strip().removeprefix("export ").partition("=")[0].strip()
            found[name] = (str(dotenv), number)
    return {**found, **{name: (None, None) for name in os.environ}}


def load_settings(settings_file: str | Path | None = None, *, env: str | None = None,
                  overrides: dict[str, Any] | None = None,
                  dotenv: str | Path | None = ".env") -> InferlineSettings:
    """Resolve every layer into one validated ``InferlineSettings``."""
    env = env or os.environ.get("INFERLINE_ENV", "dev")
    lines: Lines = {}
    data = read_yaml(PACKAGED / "defaults.yaml", lines)
    profile = PACKAGED / "profiles" / f"{env}.yaml"
    if profile.exists():
        data = deep_merge(data, read_yaml(profile, lines))
    if settings_file is not None:
        data = deep_merge(data, read_yaml(settings_file, lines))
    data["env"] = env
    _check_chains(data, lines)
    dotenv_path = Path(dotenv) if dotenv and Path(dotenv).is_file() else None
    try:
        resolved = _resolved(data, overrides or {}, dotenv_path)
    except ValidationError as exc:
        raise _blamed(validation_error(exc, lines), exc, overrides or {}, dotenv_path) from None
    except SettingsError as exc:  # a variable for a list or mapping that is not JSON
        raise ConfigurationError(f"{exc} (a list or mapping is written as JSON: "
                                 f"{exc.__cause__})") from None
    return InferlineSettings.model_validate(resolved.model_dump())
