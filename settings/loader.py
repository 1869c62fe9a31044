"""Layered settings, later wins:

packaged ``defaults.yaml`` -> ``profiles/<env>.yaml`` (``INFERLINE_ENV``, default ``dev``)
-> your ``--settings`` file -> ``.env`` -> ``INFERLINE_*`` variables (``__`` nests)
-> CLI overrides.

    settings = load_settings("deploy.yaml", overrides={"log": {"level": "DEBUG"}})

YAML values may say ``${VAR}`` or ``${VAR:-default}``. Every error is a
``ConfigurationError`` naming the file, line and key.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from inferline.settings.model import InferlineSettings, chain_members, expand_chain
from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from inferline.errors import ConfigurationError

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


def _walk(node: yaml.Node, file: str, path: tuple[str, ...], lines: Lines) -> Any:
    lines[path] = (file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        return {k.value: _walk(v, file, (*path, k.value), lines) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, file, (*path, str(i)), lines) for i, v in enumerate(node.value)]
    if "${" in node.value:
        text = _interpolate(node.value, file, node.start_mark.line + 1, ".".join(path))
        return text if node.style in ("'", '"') else yaml.safe_load(text)
    return yaml.safe_load(yaml.serialize(node))


def read_yaml(path: str | Path, lines: Lines) -> dict[str, Any]:
    """A YAML mapping with ``${VAR}`` resolved, recording each key's line in ``lines``."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read file ({exc.strerror})", file=file) from exc
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigurationError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=file,
                                 line=mark.line + 1 if mark else None) from exc
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigurationError("top level must be a mapping", file=file, line=1)
    return _walk(node, file, (), lines)


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
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                       dotenv_settings, file_secret_settings):  # type: ignore[override]
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
        raise validation_error(exc, lines) from None
    return InferlineSettings.model_validate(resolved.model_dump())
