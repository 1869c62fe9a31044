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


async def test_shutdown_closes_every_engine_built() -> None:
    container = build_container()
    fake = FakeEngine("local_llamacpp")
    closed: list[str] = []

    async def aclose() -> None:
        closed.append(fake.name)

    fake.aclose = aclose  # type: ignore[method-assign]
    container.engine_overrides.override(providers.Object({"local_llamacpp": fake}))
    container.engines.reset()
    await container.init_resources()
    assert container.chains().get("default").engines[1] is fake
    await container.shutdown_resources()
    assert closed == ["local_llamacpp"]


def test_pipelines_share_engines_and_breakers(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    for name in ("a", "b"):
        (tmp_path / "p" / f"{name}.yaml").write_text(
            f"name: {name}\nsteps: [{{template: {{user: hi}}}}, "
            "{generate: {engines: [local_llamacpp, openai]}}]\n")
    settings = tmp_path / "s.yaml"
    settings.write_text(f"pipelines: {{dirs: ['{tmp_path / 'p'}']}}\n")
    container = build_container(settings)
    pipelines = container.pipelines()
    assert {"a", "b"} <= set(pipelines.names())
    [a], [b] = pipelines.get("a").chains, pipelines.get("b").chains
    assert a is b  # the same inline chain, so the same engines and circuit breakers
    assert a.engines[0] is container.chains().get("default").engines[1]  # local_llamacpp
    assert a.breakers is container.chains().breakers
    assert pipelines.get("a") is pipelines.get("a")
