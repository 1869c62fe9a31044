"""Batch files through a remote engine: killed mid-run and rerun, every row lands
exactly once; rows that fail for good are reported and the rest are written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inferline.core.configs import InferenceConfig, ModelParams, RemoteParams
from inferline.core.types import Conversation, write_jsonl
from inferline.engines.openai_compat import RemoteInferenceEngine
from inferline.errors import FatalEngineError
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.terminal import on_terminal

ROWS = 120
CHILD = """
import sys
from inferline.core.configs import InferenceConfig, ModelParams, RemoteParams
from inferline.engines.openai_compat import RemoteInferenceEngine
url, inp, out = sys.argv[1:4]
engine = RemoteInferenceEngine(ModelParams(model_name="m"),
                               remote_params=RemoteParams(api_url=url, num_workers=4))
engine.infer(inference_config=InferenceConfig(input_path=inp, output_path=out))
"""


def _inputs(tmp_path: Path, prompts: list[str]) -> Path:
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [Conversation.from_prompt(p) for p in prompts])
    return path


def _child(url: str, inp: Path, out: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, url, str(inp), str(out)],
                            start_new_session=True, cwd=Path(__file__).parents[2], **kwargs)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _kill_when(proc: subprocess.Popen[bytes], out: Path, lines: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _lines(out) < lines:
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.mark.slow
def test_killed_run_resumes_every_row_exactly_once(fault_server: FaultServer,
                                                   tmp_path: Path) -> None:
    scenario = Scenario(delay_s=0.05)
    url, out = fault_server.url(scenario), tmp_path / "out.jsonl"
    inp = _inputs(tmp_path, [f"row {i}" for i in range(ROWS)])
    _kill_when(_child(url, inp, out), out, lines=30)
    done_before = {json.loads(line)["_row"]
                   for line in out.read_text().splitlines()}
    with open(out, "a") as fh:
        fh.write('{"messages": [{"role": "assi')  # what a kill in mid-write leaves behind
    sent_before = len(scenario.requests)
    rerun = _child(url, inp, out, stderr=subprocess.PIPE)
    _, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr.decode()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    indices = [r["_row"] for r in rows]
    assert sorted(indices) == list(range(ROWS))  # every row, once
    assert all(r["messages"][-1]["content"] == f"echo: row {r['_row']}"
               for r in rows)
    resent = {p for p in scenario.prompts()[sent_before:]}
    assert not resent & {f"row {i}" for i in done_before}  # finished rows not redone
    assert b"RemoteInferenceEngine" not in stderr  # no progress bar when not a terminal


@pytest.mark.slow
def test_progress_bar_on_a_terminal(fault_server: FaultServer, tmp_path: Path) -> None:
    inp, out = _inputs(tmp_path, [f"r{i}" for i in range(40)]), tmp_path / "out.jsonl"
    url = fault_server.url(Scenario(delay_s=0.01))
    code, seen = on_terminal([sys.executable, "-c", CHILD, url, str(inp), str(out)],
                             cwd=Path(__file__).parents[2])
    assert code == 0
    assert b"RemoteInferenceEngine" in seen and b"40/40" in seen


def test_rows_failing_for_good_are_reported_and_the_rest_written(
        fault_server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = Scenario(fatal_marker="FAIL")
    prompts = ["a", "b", "FAIL c", "d", "FAIL e", "f"]
    inp, out = _inputs(tmp_path, prompts), tmp_path / "out.jsonl"
    engine = RemoteInferenceEngine(ModelParams(model_name="m"), remote_params=RemoteParams(
        api_url=fault_server.url(scenario), num_workers=3))
    config = InferenceConfig(input_path=str(inp), output_path=str(out))
    with engine, pytest.raises(FatalEngineError, match="bad prompt"):
        engine.infer(inference_config=config)
    written = sorted(json.loads(line)["_row"] for line in out.read_text().splitlines())
    assert written == [0, 1, 3, 5]
    err = capsys.readouterr().err
    assert "row 2 (line 3):" in err and "row 4 (line 5):" in err and "HTTP 400" in err
    assert [json.loads(line)["_row"] for line in out.with_suffix(".errors.jsonl").open()] == [2, 4]
