"""`POST /v1/pipelines/{name}` on the real `inferline serve`, over a real HTTP upstream."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fixtures.fault_server import FaultServer, Scenario
from tests.server.test_serve_cli import INFERLINE, _wait_for_url

PIPELINE = """\
name: city
input: {fields: [country]}
steps:
  - template: {user: "capital of {{ country }}"}
  - generate: {chain: default, generation: {max_new_tokens: 8}}
  - postprocess: [{regex: {pattern: "echo: capital of (\\\\w+)", group: 1}}, upper]
output: city
"""


@pytest.fixture
async def served(tmp_path: Path, fault_server: FaultServer) -> AsyncIterator[tuple[str, Scenario]]:
    scenario = Scenario()
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "city.yaml").write_text(PIPELINE)
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"""\
engines:
  up: {{type: REMOTE, model: {{model_name: m}},
        remote_params: {{api_url: "{fault_server.url(scenario)}/v1", max_retries: 0}}}}
chains:
  default: [up]
pipelines: {{dirs: ["{tmp_path / 'pipelines'}"]}}
""")
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([INFERLINE, "serve", "--settings", str(settings), "--port", "0"],
                                stderr=fh, start_new_session=True)
    try:
        yield _wait_for_url(proc, log), scenario
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


async def post(url: str, body: Any) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_pipeline_runs_a_row_and_says_who_served(served: tuple[str, Scenario]) -> None:
    url, scenario = served
    status, headers, body = await post(f"{url}/v1/pipelines/city", {"country": "France", "id": 3})
    assert status == 200, body
    assert body["city"] == "FRANCE" and body["id"] == 3 and body["country"] == "France"
    assert body["_meta"]["served_by"] == "up" and headers["x-inferline-engine"] == "up"
    assert scenario.prompts() == ["capital of France"]


async def test_pipeline_errors_are_openai_style(served: tuple[str, Scenario]) -> None:
    url, scenario = served
    status, _, body = await post(f"{url}/v1/pipelines/city", {"nation": "France"})
    assert status == 400 and body["error"]["code"] == "invalid_input"
    assert "missing input field(s) 'country'" in body["error"]["message"]

    status, _, body = await post(f"{url}/v1/pipelines/citty", {"country": "France"})
    assert status == 404 and "did you mean 'city'?" in body["error"]["message"]

    status, _, body = await post(f"{url}/v1/pipelines/city", ["France"])
    assert status == 400 and body["error"]["code"] == "invalid_body"

    scenario.mode, scenario.faults = "malformed", -1  # upstream sends broken JSON
    status, _, body = await post(f"{url}/v1/pipelines/city", {"country": "Peru"})
    assert status == 503 and body["error"]["code"] == "all_engines_failed"

    scenario.mode = "ok"
    status, _, body = await post(f"{url}/v1/pipelines/city", {"country": "Peru"})
    assert status == 200 and body["city"] == "PERU"  # the server kept serving


async def test_models_lists_pipelines(served: tuple[str, Scenario]) -> None:
    url, _ = served
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/models") as resp:
        models = {m["id"]: m["inferline"]["kind"] for m in (await resp.json())["data"]}
    assert models["city"] == "pipeline" and models["capital-quiz"] == "pipeline"
    assert models["default"] == "chain" and models["up"] == "engine"


def test_broken_pipeline_stops_the_server_at_start(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bad.yaml").write_text(PIPELINE.replace("{{ country }}", "{{ contry }}"))
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"pipelines: {{dirs: ['{tmp_path / 'p'}']}}\n")
    result = subprocess.run([INFERLINE, "serve", "--settings", str(settings), "--port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert (f"{tmp_path}/p/bad.yaml:4: steps.0.template.user: template uses 'contry'"
            in result.stderr)
    assert "Unclosed" not in result.stderr
