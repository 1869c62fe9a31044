"""Falling back on bad answers: a chain with ``fallback_on: [invalid_output]`` sends a row
whose answer stays invalid after its re-asks to the next engine; ``constrain: true`` makes
the local engines answer to the schema by construction."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from inferline.containers import build_container
from inferline.core.portal import portal
from inferline.engines.catalog import EngineCatalog
from inferline.engines.testing import FakeEngine
from inferline.errors import ConfigurationError, OutputValidationError
from inferline.pipelines import ChainCatalog, Pipeline, PipelineBuilder
from inferline.settings.model import CacheSettings, ChainSettings, EngineSettings
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.pipelines.test_pipeline import catalog

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
PIPELINE = f"""\
name: people
input: {{fields: [text]}}
steps:
  - template: {{user: "Extract the person as JSON with name and age: {{{{ text }}}}"}}
  - generate: {{chain: main, generation: {{max_new_tokens: 40}}}}
  - postprocess: [{{json_schema: {{schema: {json.dumps(SCHEMA)}, reask: 1, constrain: true}}}}]
output: person
"""


def bad(i: int) -> bool:
    return i % 10 in (0, 3, 6)  # 30% of rows


def api_answer(prompt: str) -> str:
    """Valid JSON for 70% of the people; prose for the rest, and for every re-ask."""
    if not prompt.startswith("Extract"):
        return "Sorry, I cannot help with that."
    name, _, rest = prompt.rpartition(": ")[2].partition(" is ")
    i = int(name.removeprefix("P"))
    return f"Sure! {name} is a person." if bad(i) else json.dumps(
        {"name": name, "age": int(rest.split()[0])})


@pytest.fixture
def people(tmp_path: Path, fault_server: FaultServer) -> Iterator[tuple[Pipeline, Scenario]]:
    api = Scenario(answer=api_answer)
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"""\
engines:
  api: {{type: REMOTE, model: {{model_name: m}},
        remote_params: {{api_url: '{fault_server.url(api)}/v1', max_retries: 0, num_workers: 8}}}}
  llama: {{type: LLAMACPP, model: {{model_name: smollm2-135m}}}}
chains:
  main: {{engines: [api, llama], fallback_on: [unavailable, retryable, invalid_output]}}
""")
    (tmp_path / "people.yaml").write_text(PIPELINE)
    container = build_container(settings)
    yield container.pipelines().load(str(tmp_path / "people.yaml")), api
    portal.run(container.engines().aclose())


@pytest.mark.slow
def test_invalid_answers_fall_back_to_the_next_engine(people: tuple[Pipeline, Scenario]) -> None:
    pipeline, api = people
    rows = [{"text": f"P{i} is {20 + i % 60} years old."} for i in range(200)]
    out = pipeline.run_batch(rows)

    assert [o.error for o in out] == [None] * 200
    for o in out:  # 100% schema-valid
        jsonschema.validate(o.output["person"], SCHEMA)  # type: ignore[index]
    served = Counter(o.output["_meta"]["served_by"] for o in out)  # type: ignore[index]
    assert served == {"api": 140, "llama": 60}
    calls = Counter(r["prompt"].rpartition(": ")[2] for r in api.requests
                    if r["prompt"].startswith("Extract"))
    reasks = sum(not r["prompt"].startswith("Extract") for r in api.requests)
    assert set(calls.values()) == {1} and len(calls) == 200 and reasks == 60
    for i, o in enumerate(out):
        meta = o.output["_meta"]  # type: ignore[index]
        tried = [(a["engine"], a["error"]) for a in meta["attempts"]]
        if bad(i):  # the first answer, its one re-ask, then one call to llama.cpp
            assert tried == [("api", "OutputValidationError"), ("api", "OutputValidationError"),
                             ("llama", None)], tried
            assert "answer: 'Sure! P" in meta["attempts"][0]["message"]
            assert meta["served_by"] == "llama"
        else:
            assert tried == [("api", None)]
            assert o.output["person"] == {"name": f"P{i}", "age": 20 + i % 60}  # type: ignore[index]
    # constrain: true reached the remote engine as a response format, best effort
    assert api.requests[0]["body"]["response_format"]["json_schema"]["schema"] == SCHEMA


def test_without_invalid_output_in_fallback_on_the_row_fails_as_before() -> None:
    first = FakeEngine("first", reply=lambda p, n: "not json")
    second = FakeEngine("second", reply=lambda p, n: '{"name": "x", "age": 1}')
    spec = (PipelineBuilder("p", fields=["t"]).template("{{ t }}").generate(chain="main")
            .postprocess({"json_schema": {"schema": SCHEMA, "reask": 1}}).build())
    [row] = Pipeline(spec, catalog(first=first, second=second)).run_batch([{"t": "a"}])
    assert isinstance(row.error, OutputValidationError)
    assert len(first.seen) == 2 and second.seen == []


def test_every_engine_rejected_lists_each_rejected_answer() -> None:
    engines = {n: FakeEngine(n, reply=lambda p, n: "never json") for n in ("a", "b")}
    chains = ChainCatalog({"main": ChainSettings(engines=["a", "b"],
                                                 fallback_on=["invalid_output"])},
                          EngineCatalog({n: EngineSettings(type="REMOTE") for n in engines},
                                        overrides=engines))
    spec = (PipelineBuilder("p", fields=["t"]).template("{{ t }}").generate(chain="main")
            .postprocess({"json_schema": {"schema": SCHEMA}}).build())
    [row] = Pipeline(spec, chains).run_batch([{"t": "a"}])
    assert isinstance(row.error, OutputValidationError)  # the last engine's answer was invalid
    assert [len(e.seen) for e in engines.values()] == [1, 1]
    assert row.calls[0].attempts[-1].error == "OutputValidationError"
    assert [c.served_by for c in row.calls] == ["a", "b"]


def test_constrain_conflicts_with_guided_decoding_set_on_the_step() -> None:
    spec = (PipelineBuilder("p", fields=["t"]).template("{{ t }}")
            .generate(chain="main", generation={"guided_decoding": {"regex": "a+"}})
            .postprocess({"choice": {"options": ["a", "b"], "constrain": True}}).build())
    with pytest.raises(ConfigurationError, match="already sets generation.guided_decoding"):
        Pipeline(spec, catalog(e=FakeEngine("e")))


def test_a_rejected_answer_leaves_the_response_cache(tmp_path: Path) -> None:
    engine = FakeEngine("e", reply=lambda p, n: "not json" if n == 1 else '{"name": "x", "age": 1}')
    cache = CacheSettings(path=str(tmp_path / "cache"))
    chains = ChainCatalog({"main": ChainSettings(engines=["e"])},
                          EngineCatalog({"e": EngineSettings(type="REMOTE", cache=cache)},
                                        overrides={"e": engine}))
    spec = (PipelineBuilder("p", fields=["t"]).template("{{ t }}").generate(chain="main")
            .postprocess({"json_schema": {"schema": SCHEMA}}).build())
    pipeline = Pipeline(spec, chains)
    [first] = pipeline.run_batch([{"t": "a"}])
    assert isinstance(first.error, OutputValidationError)
    [again] = pipeline.run_batch([{"t": "a"}])  # asked again, not served the bad answer
    assert again.output is not None and again.output["output"] == {"name": "x", "age": 1}
    [hit] = pipeline.run_batch([{"t": "a"}])  # the good answer was kept
    assert hit.output is not None and hit.output["_meta"].get("cache") == "hit"
    assert len(engine.seen) == 2
    portal.run(chains.engines.aclose())
