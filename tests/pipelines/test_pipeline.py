"""Pipelines end to end: several generate steps, re-asks, bad rows, and fallback over real
engines and a real faulty HTTP server."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from inferline.containers import build_container
from inferline.core.portal import portal
from inferline.engines.base import BaseInferenceEngine
from inferline.engines.catalog import EngineCatalog
from inferline.engines.testing import FakeEngine
from inferline.errors import InputError, OutputValidationError, TemplateError
from inferline.pipelines import ChainCatalog, Pipeline, PipelineBuilder
from inferline.settings.model import ChainSettings, EngineSettings
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.gateway import free_port


def catalog(**engines: BaseInferenceEngine) -> ChainCatalog:
    specs = {n: EngineSettings(type="REMOTE") for n in engines}
    return ChainCatalog({"main": ChainSettings(engines=list(engines))},
                        EngineCatalog(specs, overrides=engines))


def test_second_generate_step_sees_the_first_output() -> None:
    engine = FakeEngine("e", reply=lambda prompt, n: f"<{prompt}>")
    spec = (PipelineBuilder("two", fields=["country"])
            .template("capital of {{ country }}").generate(chain="main", output="capital")
            .postprocess("upper")
            .template("landmark in {{ capital }}").generate(chain="main")
            .build(output="landmark"))
    [out] = Pipeline(spec, catalog(e=engine)).run_batch([{"country": "France", "id": 7}])
    assert out.output is not None
    assert out.output["capital"] == "<CAPITAL OF FRANCE>"
    assert out.output["landmark"] == "<landmark in <CAPITAL OF FRANCE>>"
    assert out.output["id"] == 7
    assert out.output["_meta"]["served_by"] == "e"
    assert out.output["_meta"]["usage"] == {"prompt_tokens": 6, "completion_tokens": 4,
                                            "total_tokens": 10}
    assert out.served_by == ["e", "e"]


def test_invalid_json_is_reasked_then_accepted() -> None:
    def reply(prompt: str, nth: int) -> str:
        return '{"city": "Paris"}' if nth > 1 else "Paris, of course"

    engine = FakeEngine("e", reply=reply)
    spec = (PipelineBuilder("js", fields=["country"]).template("capital of {{ country }}")
            .generate(chain="main")
            .postprocess({"json_schema": {"schema": {"type": "object", "required": ["city"]},
                                          "reask": 1}})
            .build())
    [out] = Pipeline(spec, catalog(e=engine)).run_batch([{"country": "France"}])
    assert out.output is not None and out.output["output"] == {"city": "Paris"}
    reask = engine.seen[-1].messages
    assert [m.role.value for m in reask] == ["user", "assistant", "user"]
    assert reask[1].text == "Paris, of course"
    assert reask[2].text.startswith("Your answer was not valid (no JSON value found in the output)")
    assert out.served_by == ["e", "e"]


def test_reasks_are_bounded_and_only_the_bad_row_fails() -> None:
    engine = FakeEngine("e", reply=lambda p, n: "never json" if "Peru" in p else '{"city": "x"}')
    spec = (PipelineBuilder("js", fields=["country"]).template("capital of {{ country }}")
            .generate(chain="main")
            .postprocess({"json_schema": {"schema": {"type": "object"}, "reask": 2}}).build())
    out = Pipeline(spec, catalog(e=engine)).run_batch([{"country": "France"}, {"country": "Peru"},
                                                       {"country": "Chad"}])
    assert [o.output["output"] if o.output else None for o in out] == [{"city": "x"}, None,
                                                                         {"city": "x"}]
    assert isinstance(out[1].error, OutputValidationError)
    assert sum("Peru" in c.messages[0].text for c in engine.seen) == 3  # first try + 2 re-asks


def test_bad_rows_fail_alone_and_never_reach_the_engine() -> None:
    engine = FakeEngine("e", reply=lambda p, n: "ok")
    spec = (PipelineBuilder("t", fields=["country"]).template("{{ country.__class__ }}")
            .generate(chain="main").build())
    pipeline = Pipeline(spec, catalog(e=engine))
    out = pipeline.run_batch([{"country": "France"}, {"nation": "Peru"}, ["not", "a", "row"]])
    assert isinstance(out[0].error, TemplateError)
    assert isinstance(out[1].error, InputError)
    assert "missing input field(s) 'country'" in str(out[1].error)
    assert isinstance(out[2].error, InputError) and "expected a JSON object" in str(out[2].error)
    assert engine.seen == []
    with pytest.raises(InputError):
        pipeline.run({"nation": "Peru"})


def settings_file(tmp_path: Path, engines: dict[str, str], chain: list[str],
                  breaker: str = "") -> Path:
    lines = ["engines:"] + [f"  {name}: {spec}" for name, spec in engines.items()]
    lines += ["chains:", f"  main: {{engines: [{', '.join(chain)}]{breaker}}}"]
    path = tmp_path / "settings.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def remote(url: str, **extra: Any) -> str:
    params = ", ".join(f"{k}: {v}" for k, v in {"max_retries": 0, "num_workers": 8,
                                                 **extra}.items())
    return (f"{{type: REMOTE, model: {{model_name: m}}, "
            f"remote_params: {{api_url: '{url}', {params}}}}}")


QUIZ = """\
name: quiz
input: {fields: [country]}
steps:
  - template: {system: You answer in one word., user: "What is the capital of {{ country }}?"}
  - generate: {chain: main, generation: {max_new_tokens: 16}}
  - postprocess: [strip, {regex: {pattern: "([A-Z][a-z]+)[.!]?$", group: 1}}]
output: answer
"""


ECHO = """\
name: echo
input: {fields: [country]}
steps: [{template: {user: "{{ country }}"}}, {generate: {chain: main}}]
output: answer
"""


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    """``load(settings, text)``: the pipeline in ``text`` over the engines of ``settings``."""
    containers = []

    def load(settings: Path, text: str = QUIZ) -> Pipeline:
        containers.append(build_container(settings))
        (tmp_path / "pipeline.yaml").write_text(text)
        return containers[-1].pipelines().load(str(tmp_path / "pipeline.yaml"))

    yield load
    for container in containers:
        portal.run(container.engines().aclose())


@pytest.mark.slow
def test_refused_first_engine_then_real_llamacpp_serves_every_row(
        tmp_path: Path, smollm_gguf: Path, load: Callable[..., Pipeline]) -> None:
    dead = remote(f"http://127.0.0.1:{free_port()}/v1", connect_timeout=1)
    settings = settings_file(tmp_path, {"dead": dead, "llama": "{type: LLAMACPP, model: "
                                        "{model_name: smollm2-135m}}"}, ["dead", "llama"])
    pipeline = load(settings)
    rows = [{"country": c} for c in ("France", "Italy", "Japan", "Spain")]
    with capture_logs() as logs:
        out = pipeline.run_batch(rows)
    assert [o.output["answer"] for o in out] == ["Paris", "Rome", "Tokyo", "Madrid"]  # type: ignore[index]
    for o in out:
        attempts = o.output["_meta"]["attempts"]  # type: ignore[index]
        assert [(a["engine"], a["error"]) for a in attempts] == [
            ("dead", "RetryableEngineError"), ("llama", None)]
        message = attempts[0]["message"].lower()
        assert "refused" in message or "connect" in message
    assert any(e["event"] == "engine_fallback" and e["failed"] == "dead" for e in logs)


def test_first_engine_failing_30_percent_with_503_loses_nothing(
        tmp_path: Path, fault_server: FaultServer, load: Callable[..., Pipeline]) -> None:
    flaky = Scenario(mode="status", status=503, fail_ratio=0.3)
    healthy = Scenario()
    settings = settings_file(tmp_path, {"flaky": remote(fault_server.url(flaky) + "/v1"),
                                        "backup": remote(fault_server.url(healthy) + "/v1")},
                             ["flaky", "backup"], ", circuit_breaker: {failure_threshold: 1000}")
    pipeline = load(settings, ECHO)
    rows = [{"country": f"Country{i}"} for i in range(100)]
    out = pipeline.run_batch(rows)
    assert all(o.error is None for o in out)
    assert [o.output["country"] for o in out] == [r["country"] for r in rows]  # type: ignore[index]
    assert all(o.output["answer"] == f"echo: Country{i}" for i, o in enumerate(out))  # type: ignore[index]
    served = Counter(o.served_by[0] for o in out)
    assert served["backup"] == len(healthy.requests) and 15 <= served["backup"] <= 45
    assert served["flaky"] == 100 - served["backup"]
    for o in out:
        if o.served_by == ["backup"]:
            assert o.output["_meta"]["attempts"][0]["error"] == "RetryableEngineError"  # type: ignore[index]


def test_circuit_opens_skips_the_engine_and_closes_again(
        tmp_path: Path, fault_server: FaultServer, load: Callable[..., Pipeline]) -> None:
    down = Scenario(mode="status", status=503, faults=-1)
    settings = settings_file(tmp_path, {"primary": remote(fault_server.url(down) + "/v1"),
                                        "backup": remote(fault_server.url(Scenario()) + "/v1")},
                             ["primary", "backup"],
                             ", circuit_breaker: {failure_threshold: 2, cooldown_s: 0.5}")
    pipeline = load(settings, ECHO)
    chain = pipeline.chains[0]
    rows = [{"country": "A"}, {"country": "B"}]

    assert all(o.served_by == ["backup"] for o in pipeline.run_batch(rows))
    assert len(down.requests) == 2 and chain.describe()["circuits"]["primary"] == "open"

    out = pipeline.run_batch(rows)  # open: primary is not called at all
    assert len(down.requests) == 2
    assert out[0].output["_meta"]["attempts"][0]["message"] == "circuit open"  # type: ignore[index]

    time.sleep(0.6)
    assert chain.describe()["circuits"]["primary"] == "half_open"
    down.mode = "ok"  # the primary recovers; the trial call closes the circuit
    out = pipeline.run_batch(rows)
    assert [o.served_by for o in out] == [["primary"], ["primary"]]
    assert chain.describe()["circuits"]["primary"] == "closed"


async def test_from_yaml_and_arun(tmp_path: Path, fault_server: FaultServer) -> None:
    from inferline.settings import load_settings

    url = fault_server.url(Scenario()) + "/v1"
    settings = load_settings(settings_file(tmp_path, {"up": remote(url)}, ["up"]))
    (tmp_path / "echo.yaml").write_text(ECHO)
    pipeline = Pipeline.from_yaml(tmp_path / "echo.yaml", settings=settings)
    out = await pipeline.arun({"country": "Chile", "id": 1})
    assert (out["answer"], out["id"], out["_meta"]["served_by"]) == ("echo: Chile", 1, "up")
    await pipeline.chains[0].engines[0].aclose()
