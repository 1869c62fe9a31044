"""`inferline run` over files: exactly-once output across crashes and reruns, failed rows
reported and retried, a summary, and the default chain on this machine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.terminal import on_terminal
from tests.pipelines.test_pipeline import ECHO, remote, settings_file


def inferline(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferline", *args], capture_output=True,
                          text=True, timeout=120, **kwargs)


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def setup(tmp_path: Path, scenario: Scenario, fault_server: FaultServer,
          **remote_params: Any) -> tuple[Path, Path]:
    settings = settings_file(tmp_path, {"up": remote(fault_server.url(scenario) + "/v1",
                                                     **remote_params)}, ["up"])
    (tmp_path / "echo.yaml").write_text(ECHO)
    return settings, tmp_path / "echo.yaml"


def test_failed_rows_are_reported_kept_apart_and_retried(tmp_path: Path,
                                                         fault_server: FaultServer) -> None:
    scenario = Scenario(fatal_marker="poison")
    settings, pipeline = setup(tmp_path, scenario, fault_server)
    rows = [{"country": f"c{i}"} for i in range(20)]
    rows[7] = {"country": "poison"}
    data = write_rows(tmp_path / "in.jsonl", rows)
    out, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"

    first = inferline("run", str(pipeline), "--input", str(data), "--output", str(out),
                      "--settings", str(settings), "--concurrency", "8")
    assert first.returncode == 1
    written = read_rows(out)
    assert [r["_row"] for r in written] == [i for i in range(20) if i != 7]  # input order
    assert written[0]["answer"] == "echo: c0" and written[0]["_meta"]["served_by"] == "up"
    [failed] = read_rows(errors)
    assert failed["_row"] == 7 and failed["line"] == 8 and failed["input"] == {"country": "poison"}
    assert failed["error"]["type"] == "FatalEngineError"  # a 400 is not worth another engine
    assert "HTTP 400" in failed["error"]["message"]
    assert "row 7 (line 8): FatalEngineError: up: HTTP 400: bad prompt" in first.stderr
    assert "rows: 20 (19 ok, 1 failed, 0 already done)" in first.stderr
    assert "served by: up 19" in first.stderr

    scenario.fatal_marker = None  # the upstream is fixed; a rerun does only the failed row
    before = len(scenario.requests)
    second = inferline("run", str(pipeline), "--input", str(data), "--output", str(out),
                       "--settings", str(settings))
    assert second.returncode == 0, second.stderr
    assert len(scenario.requests) - before == 1
    assert sorted(r["_row"] for r in read_rows(out)) == list(range(20))
    assert not errors.exists()
    assert "rows: 20 (1 ok, 0 failed, 19 already done)" in second.stderr


def test_malformed_input_lines_fail_alone_with_their_line(tmp_path: Path,
                                                          fault_server: FaultServer) -> None:
    settings, pipeline = setup(tmp_path, Scenario(), fault_server)
    data = tmp_path / "in.jsonl"
    data.write_text('{"country": "a"}\n\n{"country": \n[1, 2]\n{"nation": "x"}\n{"country": "b"}\n')
    result = inferline("run", str(pipeline), "--input", str(data), "--settings", str(settings))
    assert result.returncode == 1
    assert [(r["_row"], r["answer"]) for r in map(json.loads, result.stdout.splitlines())] == [
        (0, "echo: a"), (4, "echo: b")]
    assert f"row 1 (line 3): InputError: {data}:3: not valid JSON" in result.stderr
    assert (f"row 2 (line 4): InputError: {data}:4: expected a JSON object, got list"
            in result.stderr)
    assert ("row 3 (line 5): InputError: missing input field(s) 'country' (pipeline 'echo')"
            in result.stderr)


def test_killed_run_resumes_with_every_row_exactly_once(tmp_path: Path,
                                                        fault_server: FaultServer) -> None:
    scenario = Scenario(delay_s=0.05)
    settings, pipeline = setup(tmp_path, scenario, fault_server)
    data = write_rows(tmp_path / "in.jsonl", [{"country": f"c{i}"} for i in range(60)])
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "inferline", "run", str(pipeline), "--input", str(data),
            "--output", str(out), "--settings", str(settings), "--concurrency", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while (not out.exists() or len(out.read_text().splitlines()) < 10) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    done_before = len(read_rows(out))
    assert 10 <= done_before < 60

    rerun = inferline(*args[3:])
    assert rerun.returncode == 0, rerun.stderr
    rows = [r["_row"] for r in read_rows(out)]
    assert sorted(rows) == list(range(60)), Counter(rows).most_common(3)
    assert "already done" in rerun.stderr and f"{done_before} already done" in rerun.stderr
    asked = Counter(scenario.prompts())
    assert set(asked) == {f"c{i}" for i in range(60)}
    assert sum(asked.values()) <= 60 + 2  # at most the wave in flight at the kill is asked twice


@pytest.mark.slow
def test_default_chain_here_says_why_it_skips_and_serves_from_llamacpp(tmp_path: Path,
                                                                      smollm_gguf: Path) -> None:
    """What `make run` does: vLLM needs a GPU, OpenAI a key; llama.cpp answers every row."""
    out = tmp_path / "out.jsonl"
    result = inferline("run", "capital-quiz", "--input", "examples/countries.jsonl",
                       "--output", str(out), cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    assert "engine=local_vllm reason='local_vllm: no GPU" in result.stderr
    assert ("engine=openai reason='openai: API key variable OPENAI_API_KEY is not set'"
            in result.stderr)
    rows = read_rows(out)
    assert {r["country"]: r["answer"] for r in rows}["France"] == "Paris"
    assert {r["_meta"]["served_by"] for r in rows} == {"local_llamacpp"}
    assert f"served by: local_llamacpp {len(rows)}" in result.stderr


def test_progress_bar_on_a_terminal(tmp_path: Path, fault_server: FaultServer) -> None:
    settings, pipeline = setup(tmp_path, Scenario(delay_s=0.01), fault_server)
    data = write_rows(tmp_path / "in.jsonl", [{"country": f"c{i}"} for i in range(30)])
    code, seen = on_terminal([sys.executable, "-m", "inferline", "run", str(pipeline), "--input",
                              str(data), "--output", str(tmp_path / "out.jsonl"), "--settings",
                              str(settings), "--concurrency", "10"])
    assert code == 0
    assert b'"answer"' not in seen  # rows go to the file, the terminal gets the bar
    assert b"echo: 100%" in seen and b"30/30" in seen  # the bar is named after the pipeline
