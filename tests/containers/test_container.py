"""The container builds named engines and chains from settings; tests override engines."""

from __future__ import annotations

from pathlib import Path

from dependency_injector import providers

from inferline.containers import build_container
from inferline.core.types import Conversation
from inferline.errors import ConfigurationError
from tests.pipelines.test_fallback import FakeEngine


def test_engines_and_chains_from_settings(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("chains:\n  local: [local_vllm, local_llamacpp]\n")
    container = build_container(path)
    engines = container.engines()
    assert engines is container.engines()  # one catalog, shared
    assert engines.get("local_llamacpp") is engines.get("local_llamacpp")
    assert type(engines.get("local_llamacpp")).__name__ == "LlamaCppInferenceEngine"
    chain = container.chains().get("local")
    assert [e.name for e in chain.engines] == ["local_vllm", "local_llamacpp"]


def test_unknown_engine_suggests_the_closest() -> None:
    container = build_container()
    try:
        container.engines().get("local_lamacpp")
    except ConfigurationError as exc:
        assert exc.hint == "local_llamacpp"
    else:
        raise AssertionError("no error")


def test_tests_can_override_any_engine() -> None:
    container = build_container()
    fake = FakeEngine("local_llamacpp")
    container.engine_overrides.override(providers.Object({"local_llamacpp": fake}))
    container.engines.reset()
    chain = container.chains().get("default")
    [out] = chain.infer([Conversation.from_prompt("hi")])
    assert out.messages[-1].text == "local_llamacpp: hi" and fake.calls == 1
    assert out.metadata["served_by"] == "local_llamacpp"  # vLLM skipped: no GPU; openai not needed
