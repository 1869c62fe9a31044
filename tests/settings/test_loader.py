"""Settings layering, interpolation and error locations, with real files and env vars."""

from __future__ import annotations

import time
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
    path = _write(tmp_path, "s.yaml", "engines:\n  x:\n    type: LLAMACPP\n"
                  "    model: {model_name: m, modl_kwargs: {}}\n")
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


def billion_laughs() -> str:
    """Nine levels of nine aliases: 9**9 values once expanded, from a few hundred bytes."""
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    path = _write(tmp_path, "s.yaml", billion_laughs())
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as err:
        load_settings(path)
    assert time.monotonic() - started < 10  # expanded in full, it would not finish at all
    assert str(err.value).startswith(f"{path}:1: ")
    assert "more than 50000 values once aliases are expanded" in str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ("a: " + "[" * 100_000, ":1: invalid YAML: nested deeper than 100 levels"),
    ("log: &a [*a]\n", ":1: nested deeper than 100 levels"),  # an alias inside its own anchor
    ("log: {level: INFO}\nserver: {port: !port 80}\n",
     ":2: server.port: invalid value: could not determine a constructor for the tag '!port'"),
])
def test_deep_or_odd_yaml_is_one_located_error(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, "s.yaml", text)
    with pytest.raises(ConfigurationError) as err:
        load_settings(path)
    assert str(err.value) == f"{path}{message}"


@pytest.mark.parametrize(("data", "message"), [
    (bytes(range(256)), ":2: file is not UTF-8 text (byte 0x80 at offset 128)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ":1: file is not UTF-8 text (byte 0x89 at offset 0)"),
    ("log: {level: INFO}\n".encode("utf-16"), ":1: file is not UTF-8 text (it looks like UTF-16)"),
    ("log: {level: INFO}\n".encode("utf-16-le"), ":1: file is not UTF-8 text (character #x0000)"),
    (b"log: {level: INFO}\n" + b"#" * (1024 * 1024), ": file is larger than 1024 KiB"),
])
def test_binary_or_huge_file_is_refused(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigurationError) as err:
        load_settings(path)
    assert str(err.value) == f"{path}{message}"


def test_bad_variable_is_blamed_on_the_variable(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    user = _write(tmp_path, "s.yaml", "server: {port: 9001}\n")
    monkeypatch.setenv("INFERLINE_SERVER__PORT", "abc")
    with pytest.raises(ConfigurationError) as err:
        load_settings(user)
    assert str(err.value) == ("INFERLINE_SERVER__PORT: Input should be a valid integer, "
                              "unable to parse string as an integer")
    monkeypatch.delenv("INFERLINE_SERVER__PORT")
    dotenv = _write(tmp_path, ".env", "# local\nINFERLINE_LOG__FORMAT=xml\n")
    with pytest.raises(ConfigurationError) as err:
        load_settings(user, dotenv=dotenv)
    assert str(err.value).startswith(f"{dotenv}:2: INFERLINE_LOG__FORMAT: Input should be")


def test_bad_override_names_its_key_not_a_file(tmp_path: Path) -> None:
    user = _write(tmp_path, "s.yaml", "server: {port: 9001}\n")
    with pytest.raises(ConfigurationError) as err:
        load_settings(user, overrides={"server": {"port": 70000}})
    assert str(err.value) == "server.port: Input should be less than or equal to 65535"


def test_data_dir_is_not_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # models live in $INFERLINE_DATA_DIR; a setting that nothing read is an error, not ignored,
    # and it is blamed on the file, also while that variable is set
    monkeypatch.setenv("INFERLINE_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigurationError, match=r"s.yaml:1: data_dir: Extra inputs"):
        load_settings(_write(tmp_path, "s.yaml", "data_dir: /srv/models\n"))


def test_list_variable_not_written_as_json_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERLINE_SERVER__API_KEY_ENV_VARNAMES", "KEY_A")
    with pytest.raises(ConfigurationError, match=r'"server".*a list or mapping is written as JSON'):
        load_settings()
