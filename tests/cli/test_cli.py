"""The CLI as a user runs it: a subprocess, real files, real environment variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "vllm", "llama_cpp", "google.auth")


def cli(*args: str, stdin: str = "", env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferline", *args], input=stdin, text=True,
                          capture_output=True, timeout=300, env={**os.environ, **(env or {})},
                          cwd=cwd)


def test_import_and_help_stay_light() -> None:
    code = ("import sys, inferline, inferline.inference, inferline.core.configs;"
            "from inferline.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("[]"), out.stdout + out.stderr


def test_help_lists_commands() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for command in ("infer", "engines", "models", "config", "serve"):
        assert command in out.stdout


@pytest.mark.parametrize("args, message", [
    (["infer", "--engine", "LLAMACPP", "--modl.model_name", "x"],
     "modl: Extra inputs are not permitted (did you mean 'model'?)"),
    (["infer", "--engine", "NOPE"], "engine: Input should be"),
    (["infer", "--engine", "LLAMACPP", "--generation.max_new_tokens"],
     "flag --generation.max_new_tokens needs a value"),
    (["config", "show", "--settings", "/nonexistent.yaml"], "cannot read file"),
    (["bogus"], "invalid choice: 'bogus'"),
    # a stray flag is refused by every command but infer (whose extras are overrides)
    (["models", "--bogus"], "unrecognized arguments: --bogus"),
    (["engines", "--bogus"], "unrecognized arguments: --bogus"),
    (["serve", "--port", "9", "--bogus"], "unrecognized arguments: --bogus"),
    (["config", "show", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    out = cli(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_config_file_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "infer.yaml"
    config.write_text("engine: LLAMACPP\ngeneration:\n  max_new_tokns: 5\n")
    out = cli("infer", "-c", str(config))
    assert out.returncode == 2
    assert f"{config}:3: generation.max_new_tokns" in out.stderr
    assert "did you mean 'max_new_tokens'" in out.stderr



@pytest.mark.parametrize(("args", "env", "message"), [
    (["serve", "--port", "70000"], {}, "server.port: Input should be less than or equal to 65535"),
    (["serve", "--port", "-1"], {}, "server.port: Input should be greater than or equal to 0"),
    (["config", "show"], {"INFERLINE_SERVER__PORT": "abc"},
     ("INFERLINE_SERVER__PORT: Input should be a valid integer, unable to parse string as an "
      "integer")),
    (["serve"], {"INFERLINE_SERVER__PORT": "99999"},
     "INFERLINE_SERVER__PORT: Input should be less than or equal to 65535"),
])
def test_bad_flag_or_variable_names_itself(args: list[str], env: dict[str, str],
                                           message: str) -> None:
    out = cli(*args, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == f"inferline: error: {message}\n"


@pytest.mark.parametrize("data", [bytes(range(256)), "log: {level: INFO}\n".encode("utf-16")])
def test_binary_settings_file_is_one_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(data)
    out = cli("config", "show", "--settings", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"inferline: error: {path}:")
    assert "file is not UTF-8 text" in out.stderr and out.stderr.count("\n") == 1

def test_config_show_masks_secrets(tmp_path: Path) -> None:
    secret = "sk-test-5ecret-value-123"
    out = cli("config", "show", "--env", "prod", env={"OPENAI_API_KEY": secret,
                                                      "INFERLINE_API_KEY": secret})
    assert out.returncode == 0
    assert "api_key_env_varname: OPENAI_API_KEY" in out.stdout
    assert "format: json" in out.stdout and secret not in out.stdout + out.stderr


def test_engines_says_why_not() -> None:
    out = cli("engines", env={"GEMINI_API_KEY": "x"})
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "unavailable: no API key: set OPENAI_API_KEY" in lines["OPENAI"]
    assert lines["GOOGLE_GEMINI"].endswith("ready") and lines["LLAMACPP"].endswith("ready")


def test_seed_cli_line_with_unreachable_hub_fails_clearly() -> None:
    out = cli("infer", "--engine", "VLLM", "--model.model_name",
              "meta-llama/Llama-3.2-1B-Instruct", stdin="hi\n")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "EngineUnavailableError" in out.stderr
    assert "meta-llama/Llama-3.2-1B-Instruct" in out.stderr


@pytest.mark.slow
def test_line_mode_and_chain_fallback(tmp_path: Path) -> None:
    out = cli("infer", "--chain", "default", "--system", "Answer in one word.",
              "--generation.max_new_tokens", "12",
              stdin="What is the capital of France?\nWhat is the capital of Italy?\n")
    assert out.returncode == 0, out.stderr
    answers = out.stdout.splitlines()
    assert len(answers) == 2 and "Paris" in answers[0] and "Rome" in answers[1]
    assert "engine_unavailable" in out.stderr and "local_vllm" in out.stderr


@pytest.mark.slow
def test_file_mode_with_dotted_overrides(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"messages": [{"role": "user", "content": "Say hello."}]}\n' * 3)
    out = cli("infer", "--engine", "LLAMACPP", "--model.model_name", "smollm2-135m",
              "--generation.max_new_tokens", "5", "--model.model_kwargs.n_ctx", "512",
              "--input_path", str(src), "--output_path", str(dst))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["_row"] for r in rows] == [0, 1, 2]
    assert all(r["metadata"]["usage"]["completion_tokens"] == 5
               or r["metadata"]["finish_reason"] == "stop" for r in rows)
    assert all(r["metadata"]["served_by"] == "LlamaCppInferenceEngine" for r in rows)
