"""The real ``inferline serve`` process: binding rules, serving, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest

from inferline.cli import main
from tests.fixtures.fault_server import Scenario

INFERLINE = str(Path(sys.executable).with_name("inferline"))


def settings_file(folder: Path, upstream_url: str,
                  server: str = "{shutdown_grace_s: 20}") -> Path:
    path = folder / "settings.yaml"
    path.write_text(f"""\
engines:
  slow:
    type: REMOTE
    model: {{model_name: m}}
    remote_params: {{api_url: "{upstream_url}", max_retries: 0, num_workers: 8}}
chains:
  default: [slow]
server: {server}
""")
    return path


@pytest.fixture
def served(tmp_path: Path, fault_server) -> Iterator[tuple[subprocess.Popen[bytes], str, Scenario]]:
    """``inferline serve`` over a chain whose engine answers after 1.5 s."""
    scenario = Scenario(delay_s=1.5)
    path = settings_file(tmp_path, f"{fault_server.url(scenario)}/v1")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([INFERLINE, "serve", "--settings", str(path), "--port", "0"],
                                stderr=log, start_new_session=True)
    try:
        yield proc, _wait_for_url(proc, log_path), scenario
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait_for_url(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text().splitlines():
            if "serving on" in line:
                return line.rsplit(" ", 1)[-1]
        time.sleep(0.05)
    raise AssertionError(f"inferline serve did not start:\n{log_path.read_text()}")


@pytest.mark.slow
async def test_sigterm_lets_in_flight_requests_finish(served) -> None:
    proc, url, scenario = served
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
    tasks = [asyncio.create_task(client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": f"q{i}"}])) for i in range(4)]
    while scenario.in_flight < 4:  # all four are upstream now
        await asyncio.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    replies = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    answers = sorted(r.choices[0].message.content for r in replies)
    assert answers == [f"echo: q{i}" for i in range(4)]
    assert await asyncio.to_thread(proc.wait, 30) == 0
    with pytest.raises(aiohttp.ClientConnectionError):  # and it no longer listens
        async with aiohttp.ClientSession() as http, http.get(f"{url}/health"):
            pass


def test_public_bind_without_keys_is_refused(tmp_path: Path, capsys) -> None:
    path = settings_file(tmp_path, "http://127.0.0.1:9/v1")
    assert main(["serve", "--settings", str(path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "0.0.0.0" in err and "--allow-unauthenticated-public" in err


def test_unset_key_variable_is_named_not_shown(tmp_path: Path, capsys) -> None:
    path = settings_file(tmp_path, "http://127.0.0.1:9/v1",
                         server="{api_key_env_varnames: [GATEWAY_KEY_A]}")
    assert main(["serve", "--settings", str(path)]) == 2
    assert "GATEWAY_KEY_A is not set" in capsys.readouterr().err
