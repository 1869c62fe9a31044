"""What a run costs: ``_meta.cost`` per row (every call, rejected answers and re-asks
included), per engine in the run summary, ``--max-cost`` stopping a run that a rerun
finishes, and cache hits and replays costing 0 -- on the fault server (whose token counts
are whitespace words) and a real llama.cpp engine priced per second."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inferline.containers import Container, build_container
from inferline.core.cost import usd
from inferline.core.portal import portal
from inferline.pipelines import Pipeline
from inferline.pipelines.runner import arun_file
from inferline.settings import load_settings
from tests.fixtures.fault_protocols import openai_reply
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.pipelines.test_runner import inferline, read_rows, write_rows

pytestmark = pytest.mark.slow

IN, OUT = 2.5, 10.0  # USD per million prompt / completion tokens
M = 1_000_000
BAD = "not json at all"
GOOD = '{"city": "Paris"}'

JSON_PIPELINE = """\
name: js
input: {fields: [country]}
steps:
  - template: {user: "{{ country }}"}
  - generate: {chain: main, generation: {max_new_tokens: 16}}
  - postprocess: [{json_schema: {schema: {type: object, required: [city]}, reask: 1}}]
output: answer
"""
ECHO = """\
name: echo
input: {fields: [country]}
steps: [{template: {user: "{{ country }}"}}, {generate: {chain: main}}]
output: answer
"""


def engine(url: str, price: str = f"{{input_per_million: {IN}, output_per_million: {OUT}}}",
           extra: str = "") -> str:
    return (f"{{type: REMOTE, model: {{model_name: m}}, price: {price}, "
            f"remote_params: {{api_url: '{url}/v1', max_retries: 0, num_workers: 8}}{extra}}}")


def settings(tmp_path: Path, engines: dict[str, str], chain: str, extra: str = "") -> Path:
    lines = ["engines:", *(f"  {n}: {spec}" for n, spec in engines.items()),
             "chains:", f"  main: {chain}", extra]
    path = tmp_path / "settings.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def call_costs(scenario: Scenario, question: str) -> list[float]:
    """What each request the fault server got for ``question`` costs at IN/OUT, in order:
    its reply's token counts (the server's own, deterministic) times the prices."""
    costs = []
    for request in scenario.requests:
        body = request["body"]
        if body["messages"][0]["content"] == question:
            assert scenario.answer is not None
            usage = openai_reply(body, scenario.answer(request["prompt"]))["usage"]
            costs.append(usage["prompt_tokens"] * IN / M + usage["completion_tokens"] * OUT / M)
    return costs


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for container in made:
        portal.run(container.engines().aclose())


def pipeline(containers: list[Container], settings_path: Path, text: str,
             tmp_path: Path) -> Pipeline:
    containers.append(build_container(settings_path))
    (tmp_path / "p.yaml").write_text(text)
    return containers[-1].pipelines().load(str(tmp_path / "p.yaml"))


def test_meta_cost_is_price_times_usage_over_every_call_reasks_included(
        tmp_path: Path, fault_server: FaultServer, containers: list[Container]) -> None:
    # rows named bad* answer invalid JSON first; their re-ask is answered well
    scenario = Scenario(answer=lambda p: BAD if p.startswith("bad") else GOOD)
    path = settings(tmp_path, {"up": engine(fault_server.url(scenario))}, "[up]")
    rows = [{"country": c} for c in ("France", "bad Peru", "Chad", "bad long country name")]
    out = pipeline(containers, path, JSON_PIPELINE, tmp_path).run_batch(rows)
    for row, given in zip(out, rows, strict=True):
        assert row.output is not None, row.error
        meta = row.output["_meta"]
        costs = call_costs(scenario, given["country"])
        assert len(costs) == (2 if given["country"].startswith("bad") else 1)
        assert meta["cost"] == sum(costs, 0.0) > 0  # exactly: the same sums, in the same order
        tokens = meta["usage"]
        assert meta["cost"] == pytest.approx(tokens["prompt_tokens"] * IN / M
                                             + tokens["completion_tokens"] * OUT / M)


def test_run_summary_gives_cost_per_engine_rejected_answers_included(
        tmp_path: Path, fault_server: FaultServer) -> None:
    # "first" answers invalid JSON for odd rows; the chain then asks "second" (no re-ask)
    first = Scenario(answer=lambda p: BAD if int(p[1:]) % 2 else GOOD)
    second = Scenario(answer=lambda p: GOOD)
    path = settings(tmp_path, {"first": engine(fault_server.url(first)),
                               "second": engine(fault_server.url(second))},
                    "{engines: [first, second], fallback_on: [unavailable, retryable, "
                    "invalid_output]}")
    (tmp_path / "p.yaml").write_text(JSON_PIPELINE.replace("reask: 1", "reask: 0"))
    data = write_rows(tmp_path / "in.jsonl", [{"country": f"c{i}"} for i in range(10)])
    result = inferline("run", str(tmp_path / "p.yaml"), "--input", str(data), "--output",
                       str(tmp_path / "out.jsonl"), "--settings", str(path))
    assert result.returncode == 0, result.stderr
    spent = {name: sum((c for i in range(10) for c in call_costs(s, f"c{i}")), 0.0)
             for name, s in (("first", first), ("second", second))}
    assert len(first.requests) == 10 and len(second.requests) == 5
    assert (f"inferline: cost: {usd(spent['first'] + spent['second'])} "
            f"(first {usd(spent['first'])}, second {usd(spent['second'])})") in result.stderr
    rows = read_rows(tmp_path / "out.jsonl")
    fell_back = [r for r in rows if r["_meta"]["served_by"] == "second"]
    assert len(fell_back) == 5  # each paid for two answers: the rejected one and the good one
    assert all(r["_meta"]["cost"] == sum(call_costs(first, r["country"])
                                         + call_costs(second, r["country"]), 0.0)
               for r in fell_back)


def test_max_cost_stops_within_a_wave_and_a_rerun_finishes_every_row_once(
        tmp_path: Path, fault_server: FaultServer) -> None:
    # "cN" is 1 prompt token, "echo: cN" 2 completion tokens: each row costs $0.03
    scenario = Scenario(answer=lambda p: f"echo: {p}")
    path = settings(tmp_path, {"up": engine(fault_server.url(scenario), "{input_per_million: "
                                            "10000, output_per_million: 10000}")}, "[up]")
    (tmp_path / "echo.yaml").write_text(ECHO)
    data = write_rows(tmp_path / "in.jsonl", [{"country": f"c{i}"} for i in range(40)])
    out = tmp_path / "out.jsonl"
    args = ("run", str(tmp_path / "echo.yaml"), "--input", str(data), "--output", str(out),
            "--settings", str(path), "--concurrency", "8", "--max-cost", "0.50")

    first = inferline(*args)
    assert first.returncode == 3, first.stderr  # waves of $0.24: stops once $0.72 >= $0.50
    assert sorted(r["_row"] for r in read_rows(out)) == list(range(24))
    assert len(scenario.requests) == 24
    assert ("inferline: stopped at --max-cost $0.500000: spent $0.720000 this run; 24 rows "
            "done (24 now, 0 before), 0 failed, the rest not run; rerun to continue"
            ) in first.stderr

    second = inferline(*args)  # its cap counts only its own spend: 16 rows, $0.48
    assert second.returncode == 0, second.stderr
    assert "rows: 40 (16 ok, 0 failed, 24 already done)" in second.stderr
    assert "cost: $0.480000 (up $0.480000)" in second.stderr
    assert "stopped" not in second.stderr
    assert sorted(r["_row"] for r in read_rows(out)) == list(range(40))  # each exactly once
    assert sorted(scenario.prompts()) == sorted(f"c{i}" for i in range(40))


def test_max_cost_zero_runs_nothing_and_bad_values_are_refused(
        tmp_path: Path, fault_server: FaultServer) -> None:
    scenario = Scenario(answer=lambda p: p)
    path = settings(tmp_path, {"up": engine(fault_server.url(scenario))}, "[up]")
    (tmp_path / "echo.yaml").write_text(ECHO)
    data = write_rows(tmp_path / "in.jsonl", [{"country": "c1"}])
    base = ("run", str(tmp_path / "echo.yaml"), "--input", str(data), "--settings", str(path))
    nothing = inferline(*base, "--max-cost", "0")
    assert nothing.returncode == 3 and not scenario.requests
    assert "1 failed" not in nothing.stderr and "0 rows done" in nothing.stderr
    bad = inferline(*base, "--max-cost", "-1")
    assert bad.returncode == 2 and "--max-cost must be a number of USD" in bad.stderr


def test_cache_hits_and_replays_cost_nothing(tmp_path: Path, fault_server: FaultServer,
                                            containers: list[Container]) -> None:
    scenario = Scenario(answer=lambda p: f"echo: {p}")
    cache = f", cache: {{backend: disk, path: '{tmp_path / 'cache'}'}}"
    path = settings(tmp_path, {"up": engine(fault_server.url(scenario), extra=cache)}, "[up]")
    rows = [{"country": f"c{i}"} for i in range(3)]
    miss = pipeline(containers, path, ECHO, tmp_path).run_batch(rows)
    assert all(r.output and r.output["_meta"]["cost"] > 0 for r in miss)
    hit = pipeline(containers, path, ECHO, tmp_path).run_batch(rows)
    assert len(scenario.requests) == 3
    assert [r.output["_meta"].get("cache") for r in hit if r.output] == ["hit"] * 3
    assert [r.output["_meta"]["cost"] for r in hit if r.output] == [0.0] * 3

    cassette = tmp_path / "run.cassette.jsonl"
    replay = f"replay: record\nreplay_cassette: '{cassette}'"
    path = settings(tmp_path, {"up": engine(fault_server.url(scenario))}, "[up]", replay)
    recorded = pipeline(containers, path, ECHO, tmp_path).run_batch(rows)
    assert all(r.output and r.output["_meta"]["cost"] > 0 for r in recorded)
    path.write_text(path.read_text().replace("replay: record", "replay: replay"))
    replayed = pipeline(containers, path, ECHO, tmp_path).run_batch(rows)
    assert len(scenario.requests) == 6  # replay asked no engine
    assert [r.output["_meta"]["cost"] for r in replayed if r.output] == [0.0] * 3


def test_llamacpp_priced_per_second_of_its_share_of_the_wall_time(
        tmp_path: Path, smollm_gguf: Path, containers: list[Container]) -> None:
    per_second = 0.25
    path = settings(tmp_path, {"llama": (
        f"{{type: LLAMACPP, model: {{model_name: '{smollm_gguf}'}}, "
        f"generation: {{max_new_tokens: 8}}, price: {{per_second: {per_second}}}}}")}, "[llama]")
    (tmp_path / "echo.yaml").write_text(ECHO)
    containers.append(build_container(path))
    job = containers[-1].pipelines().load(str(tmp_path / "echo.yaml"))
    data = write_rows(tmp_path / "in.jsonl", [{"country": c} for c in ("France", "Peru", "Chad")])

    rows = job.run_batch(read_rows(data))  # one wave: one llama.cpp batch of three
    for row in rows:
        assert row.output is not None, row.error
        [call] = row.calls
        assert call.cost.seconds > 0 and call.cost.input_usd == call.cost.output_usd == 0
        assert row.output["_meta"]["cost"] == call.cost.seconds * per_second  # exactly
    batch_s = rows[0].output["_meta"]["attempts"][-1]["latency_ms"] / 1000  # type: ignore[index]
    # each row pays its share of the batch, not the whole batch: the shares add up to it
    assert sum(r.calls[0].cost.seconds for r in rows) == pytest.approx(batch_s, rel=0.1)

    summary = portal.run(arun_file(job, data, tmp_path / "out.jsonl"))
    written = read_rows(tmp_path / "out.jsonl")
    assert summary.costs["llama"] == pytest.approx(sum(r["_meta"]["cost"] for r in written))
    assert summary.costs["llama"] > 0


def test_packaged_prices_for_the_seed_cloud_models_can_be_overridden(tmp_path: Path) -> None:
    packaged = load_settings().engines
    assert packaged["openai"].price.input_per_million == 0.15
    assert packaged["anthropic"].price.output_per_million == 15.0
    assert packaged["gemini"].price.input_per_million == 0.075
    assert packaged["local_llamacpp"].price.per_second == 0.0
    mine = tmp_path / "mine.yaml"
    mine.write_text("engines:\n  openai: {price: {input_per_million: 0.1}}\n")
    price = load_settings(mine).engines["openai"].price
    assert (price.input_per_million, price.output_per_million) == (0.1, 0.60)
