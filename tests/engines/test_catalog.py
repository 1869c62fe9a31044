"""Named engines from a settings file carry their model, remote and generation settings."""

from __future__ import annotations

from pathlib import Path

from inferline.containers import build_container
from inferline.core.types import Conversation
from tests.fixtures.fault_server import FaultServer, Scenario


def test_named_engine_uses_its_settings(tmp_path: Path, fault_server: FaultServer) -> None:
    scenario = Scenario()
    path = tmp_path / "s.yaml"
    path.write_text(f"""
engines:
  echo:
    type: REMOTE
    model: {{model_name: tiny-model}}
    remote_params: {{api_url: "{fault_server.url(scenario)}/v1", num_workers: 2}}
    generation: {{max_new_tokens: 2, temperature: 0.5}}
""")
    engine = build_container(path).engines().get("echo")
    with engine:
        [out] = engine.infer([Conversation.from_prompt("one two three four")])
    assert out.last_message().text == "echo: one"  # cut at the engine's 2 new tokens
    assert out.metadata["finish_reason"] == "length" and out.metadata["served_by"] == "echo"
    body = scenario.requests[0]["body"]
    assert (body["model"], body["temperature"]) == ("tiny-model", 0.5)
    assert scenario.requests[0]["path"].endswith("/v1/chat/completions")
