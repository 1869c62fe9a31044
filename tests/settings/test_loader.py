"""Settings layering, interpolation and error locations, with real files and env vars."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferline.errors import ConfigurationError
from inferline.settings import load_settings


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_packaged_defaults_and_profiles() -> None:
    dev = load_settings()
    assert dev.env == "dev" and dev.log.format == "console"
    assert dev.chains["default"].engines == ["local_vllm", "local_llamacpp", "openai"]
    assert load_settings(env="prod").log.format == "json"


def test_each_layer_beats_the_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = _write(tmp_path, "s.yaml", "log: {level: DEBUG, format: json}\nserver: {port: 9001}\n")
    assert load_settings(user).log.level == "DEBUG"  # file beats profile
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, ".env", "INFERLINE_LOG__LEVEL=WARNING\nINFERLINE_SERVER__PORT=9002\n")
    assert load_settings(user).log.level == "WARNING"  # .env beats file
    monkeypatch.setenv("INFERLINE_LOG__LEVEL", "ERROR")
    settings = load_settings(user)
    assert (settings.log.level, settings.server.port) == ("ERROR", 9002)  # env beats .env
    assert load_settings(user, overrides={"log": {"level": "CRITICAL"}}).log.level == "CRITICAL"


def test_env_selects_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERLINE_ENV", "prod")
    assert load_settings().log.format == "json"


def test_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "s.yaml", "server:\n  port: ${PORT:-8123}\n  host: ${HOST}\n")
    monkeypatch.setenv("HOST", "127.0.0.2")
    settings = load_settings(path)
    assert (settings.server.host, settings.server.port) == ("127.0.0.2", 8123)
    monkeypatch.delenv("HOST")
    with pytest.raises(ConfigurationError) as err:
        load_settings(path)
    assert str(err.value) == f"{path}:3: server.host: environment variable HOST is not set"


def test_unknown_key_names_file_line_and_hint(tmp_path: Path) -> None:
    path = _write(tmp_path, "s.yaml",
                  "engines:\n  x:\n    type: LLAMACPP\n    model: {model_name: m, modl_kwargs: {}}\n")
    with pytest.raises(ConfigurationError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"{path}:4: engines.x.model.modl_kwargs:")
    assert err.value.hint == "model_kwargs"


def test_chain_with_unknown_engine(tmp_path: Path) -> None:
    path = _write(tmp_path, "s.yaml", "chains:\n  c: [local_llamacpp, local_lamacpp2]\n")
    with pytest.raises(ConfigurationError) as err:
        load_settings(path)
    assert err.value.line == 2 and err.value.key == "chains.c.1"
    assert err.value.hint == "local_llamacpp"


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"s.yaml:2: invalid YAML"):
        load_settings(_write(tmp_path, "s.yaml", "a: 1\n  b: [\n"))
    with pytest.raises(ConfigurationError, match="cannot read file"):
        load_settings(tmp_path / "missing.yaml")
