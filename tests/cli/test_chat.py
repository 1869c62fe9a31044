"""``inferline infer -i``: a multi-turn chat, each turn sent with the whole conversation so far."""

from __future__ import annotations

from tests.cli.test_cli import cli
from tests.fixtures.fault_server import FaultServer, Scenario


def test_interactive_chat_keeps_the_conversation(fault_server: FaultServer) -> None:
    scenario = Scenario()
    out = cli("infer", "--engine", "REMOTE", "--model.model_name", "m",
              "--remote_params.api_url", fault_server.url(scenario) + "/v1",
              "--generation.max_new_tokens", "8", "--system", "Be brief.", "-i",
              stdin="hello there\nand a second turn\n\nnot sent\n")
    assert out.returncode == 0, out.stderr
    assert "echo: hello there" in out.stdout and "echo: and a second turn" in out.stdout
    assert scenario.prompts() == ["hello there", "and a second turn"]  # empty line ends the chat
    second = scenario.requests[1]["body"]["messages"]
    assert [(m["role"], m["content"]) for m in second] == [
        ("system", "Be brief."), ("user", "hello there"), ("assistant", "echo: hello there"),
        ("user", "and a second turn")]
