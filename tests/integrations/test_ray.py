"""`inferline run --backend ray` on a real local Ray cluster (2 CPUs, 127.0.0.1): the same
output as a local run, and every row exactly once when an engine, a worker or the driver dies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from inferline.containers import build_container
from inferline.errors import ConfigurationError
from inferline.integrations.ray import (
    REMOTE_CPUS,
    actor_resources,
    block_size,
    default_workers,
    init_local,
    run_file,
)
from tests.fixtures.fault_server import FaultServer, Scenario, _serve_forever
from tests.pipelines.test_pipeline import ECHO, remote, settings_file
from tests.pipelines.test_runner import inferline, read_rows, write_rows

WORKER_TITLE = b"MapWorker(MapBatches(PipelineWorker))"  # a pool actor's process title


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray cluster for this module, listening on 127.0.0.1 only (``init_local``); its
    GCS address for other drivers."""
    import ray

    init_local(num_cpus=2)
    address = str(ray.get_runtime_context().gcs_address)
    assert address.startswith("127.0.0.1:")
    yield address
    ray.shutdown()


@contextmanager
def own_server() -> Iterator[FaultServer]:
    """A fault server of this test's own, which the test may stop mid-run (``stop()``)."""
    server, started, holder = FaultServer(), threading.Event(), {}
    thread = threading.Thread(target=_serve_forever, args=(server, started, holder), daemon=True)
    thread.start()
    assert started.wait(10), "fault server did not start"

    def stop() -> None:
        holder["loop"].call_soon_threadsafe(holder["loop"].stop)
        thread.join(10)

    server.stop = stop  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        if thread.is_alive():
            stop()


def echo_job(tmp_path: Path, engines: dict[str, str], rows: int) -> tuple[Path, Path, Path]:
    """Settings (chain ``main`` over ``engines``, in order), the echo pipeline, its input."""
    settings = settings_file(tmp_path, engines, list(engines))
    (tmp_path / "echo.yaml").write_text(ECHO)
    data = write_rows(tmp_path / "in.jsonl", [{"country": f"c{i}"} for i in range(rows)])
    return settings, tmp_path / "echo.yaml", data


def when(condition: Callable[[], bool], then: Callable[[], None], timeout: float = 60) -> None:
    """In the background: once ``condition()`` holds (polled, at most ``timeout`` s), ``then()``."""
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        then()

    threading.Thread(target=watch, daemon=True).start()


def exactly_once(out: Path, rows: int) -> list[dict[str, Any]]:
    written = read_rows(out)
    counts = Counter(r["_row"] for r in written)
    assert sorted(counts) == list(range(rows)), f"missing: {set(range(rows)) - set(counts)}"
    assert max(counts.values()) == 1, counts.most_common(3)
    assert all(r["answer"] == f"echo: c{r['_row']}" for r in written)
    return written


def without_latency(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        for attempt in row["_meta"]["attempts"]:
            attempt.pop("latency_ms")
    return sorted(rows, key=lambda r: r["_row"])


# -- no cluster needed ---------------------------------------------------------------------


def test_importing_inferline_and_the_integration_pulls_no_ray() -> None:
    code = ("import sys, inferline, inferline.cli.run, inferline.integrations.ray; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pyarrow')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_a_process_holding_a_worker_exits(tmp_path: Path) -> None:
    """A worker still referenced at interpreter exit (a script's global) does not hang it."""
    settings, pipeline, _ = echo_job(tmp_path, {"a": remote("http://127.0.0.1:9/v1")}, 1)
    code = ("import sys; from inferline.integrations.ray import PipelineWorker, _resolve; "
            "from inferline.core.portal import portal; "
            "s, p = portal.run(_resolve(sys.argv[1], sys.argv[2], None)); "
            "w = PipelineWorker(s, p.spec, 'in.jsonl'); print('built')")
    result = subprocess.run([sys.executable, "-c", code, str(pipeline), str(settings)],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "built\n"), result.stderr


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ConfigurationError, match=r"pip install 'inferline\[ray\]'"):
        run_file("echo", tmp_path / "in.jsonl")


def test_default_pool_is_one_actor_per_machine_for_local_cpu_engines(ray_address: str) -> None:
    import ray

    assert ray.cluster_resources()["CPU"] == 2 and len(ray.nodes()) == 1
    assert default_workers(ray, {"num_cpus": 1}) == 1  # llama.cpp on CPU: its threads fill it
    assert default_workers(ray, {"num_cpus": REMOTE_CPUS}) == 2  # remote-only: one per CPU


def test_ray_flags_need_the_ray_backend(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "in.jsonl", [{"country": "a"}])
    result = inferline("run", "capital-quiz", "--input", str(data), "--workers", "2")
    assert result.returncode == 2
    assert "--address and --workers need --backend ray" in result.stderr


@pytest.mark.parametrize(("engines", "gpus", "wants"), [
    ({"vllm": "{type: VLLM, model: {model_name: m, model_kwargs: {device: cuda}}}",
      "cpp": "{type: LLAMACPP, model: {model_name: m}}"}, 0, {"num_cpus": 1, "num_gpus": 1}),
    ({"vllm": "{type: VLLM, model: {model_name: m}}"}, 1, {"num_cpus": 1, "num_gpus": 1}),
    ({"vllm": "{type: VLLM, model: {model_name: m}}"}, 0, {"num_cpus": 1}),  # auto, no GPU
    ({"hf": "{type: NATIVE, model: {model_name: m}}"}, 1, {"num_cpus": 1, "num_gpus": 1}),
    ({"cpp": "{type: LLAMACPP, model: {model_name: m}}"}, 1, {"num_cpus": 1}),  # no layers out
    ({"cpp": "{type: LLAMACPP, model: {model_name: m, model_kwargs: {n_gpu_layers: -1}}}"}, 1,
     {"num_cpus": 1, "num_gpus": 1}),
    ({"up": remote("http://127.0.0.1:9/v1"), "cpp": "{type: LLAMACPP, model: {model_name: m}}"},
     1, {"num_cpus": 1}),  # a CPU engine behind a remote one still runs in the actor
    ({"a": remote("http://127.0.0.1:9/v1"), "b": remote("http://127.0.0.1:8/v1")}, 1,
     {"num_cpus": REMOTE_CPUS}),
])
def test_actor_resources_follow_the_chain(tmp_path: Path, engines: dict[str, str], gpus: int,
                                          wants: dict[str, float]) -> None:
    chains = build_container(settings_file(tmp_path, engines, list(engines))).chains()
    assert actor_resources([chains.get("main")], gpus) == wants


@pytest.mark.parametrize(("todo", "batch", "actors", "rows"), [
    (20_000, 64, 2, 2_496),  # 39 waves a block: 9 blocks, 4 or 5 per actor
    (20_000, 256, 2, 2_304),
    (1_000_000, 64, 4, 4_096),  # at most BLOCK_ROWS
    (100, 64, 2, 64),  # at least one wave
    (40, 2, 2, 4),
])
def test_a_block_holds_whole_waves_and_every_actor_gets_several(
        todo: int, batch: int, actors: int, rows: int) -> None:
    assert block_size(todo, batch, actors) == rows


# -- on a local Ray cluster ------------------------------------------------------------------


@pytest.mark.slow
def test_output_is_what_a_local_run_writes(tmp_path: Path, fault_server: FaultServer,
                                           ray_address: str) -> None:
    scenario = Scenario(fatal_marker="poison")
    settings, pipeline, data = echo_job(tmp_path, {"up": remote(
        fault_server.url(scenario) + "/v1")}, 0)
    lines = [json.dumps({"country": f"c{i}"}) for i in range(24)]
    lines[5], lines[9], lines[13] = '{"country": "poison"}', '{"country": ', "[1, 2]"
    lines.insert(3, "   ")  # blank: not a row, but a line
    data.write_text("\n".join(lines) + "\n")
    local = inferline("run", str(pipeline), "--input", str(data), "--output",
                      str(tmp_path / "local.jsonl"), "--settings", str(settings),
                      "--concurrency", "4")
    assert local.returncode == 1, local.stderr

    summary = run_file(str(pipeline), data, tmp_path / "ray.jsonl", settings=settings,
                       batch_size=4, workers=2)

    assert without_latency(read_rows(tmp_path / "ray.jsonl")) == without_latency(
        read_rows(tmp_path / "local.jsonl"))
    assert sorted(read_rows(tmp_path / "ray.errors.jsonl"), key=lambda r: r["_row"]) == sorted(
        read_rows(tmp_path / "local.errors.jsonl"), key=lambda r: r["_row"])
    assert [f"inferline: {line}" for line in summary.lines()[:-1]] == [  # all but the time
        line for line in local.stderr.splitlines() if line.startswith("inferline: ")
        and not line.startswith(("inferline: row ", "inferline: time:"))]


QUIZ = """\
name: quiz
input: {fields: [country]}
steps:
  - template: {system: You answer in one word., user: "What is the capital of {{ country }}?"}
  - generate: {chain: main, generation: {max_new_tokens: 16, temperature: 0}}
  - postprocess: [strip, {regex: {pattern: "([A-Z][a-z]+)[.!]?$", group: 1}}]
output: answer
"""


@pytest.mark.slow
def test_llamacpp_greedy_answers_are_those_of_a_local_run(tmp_path: Path, smollm_gguf: Path,
                                                          ray_address: str) -> None:
    settings = settings_file(tmp_path, {"llama": "{type: LLAMACPP, model: {model_name: "
                                                 f"'{smollm_gguf}'}}}}"}, ["llama"])
    (tmp_path / "quiz.yaml").write_text(QUIZ)
    countries = Path(__file__).parents[2] / "examples" / "countries.jsonl"
    data = tmp_path / "in.jsonl"
    data.write_text("".join(countries.read_text().splitlines(keepends=True)[:4]))  # France first
    local = inferline("run", str(tmp_path / "quiz.yaml"), "--input", str(data), "--output",
                      str(tmp_path / "local.jsonl"), "--settings", str(settings),
                      "--concurrency", "4")
    assert local.returncode == 0, local.stderr

    run_file(str(tmp_path / "quiz.yaml"), data, tmp_path / "ray.jsonl", settings=settings,
             batch_size=4, workers=1)  # a llama.cpp actor holds a whole CPU of the two

    ray_rows = without_latency(read_rows(tmp_path / "ray.jsonl"))
    assert ray_rows == without_latency(read_rows(tmp_path / "local.jsonl"))
    assert {r["country"]: r["answer"] for r in ray_rows}["France"] == "Paris"
    assert {r["_meta"]["served_by"] for r in ray_rows} == {"llama"}


@pytest.mark.slow
def test_a_dead_engine_sends_its_rows_to_the_next(tmp_path: Path, fault_server: FaultServer,
                                                 ray_address: str) -> None:
    with own_server() as first:
        doomed = Scenario(delay_s=0.1)
        settings, pipeline, data = echo_job(tmp_path, {
            "a": remote(first.url(doomed) + "/v1"),
            "b": remote(fault_server.url(Scenario()) + "/v1")}, 60)
        when(lambda: len(doomed.requests) >= 10, first.stop)  # type: ignore[attr-defined]

        summary = run_file(str(pipeline), data, tmp_path / "out.jsonl", settings=settings,
                           batch_size=2, workers=2)

    served = Counter(r["_meta"]["served_by"] for r in exactly_once(tmp_path / "out.jsonl", 60))
    assert served["a"] > 0 and served["b"] > 0 and served["a"] + served["b"] == 60, served
    assert summary.failed == 0 and not (tmp_path / "out.errors.jsonl").exists()


def worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if WORKER_TITLE in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile
                continue
    return pids


@pytest.mark.slow
def test_a_killed_worker_loses_and_repeats_no_row(tmp_path: Path, fault_server: FaultServer,
                                                  ray_address: str) -> None:
    scenario = Scenario(delay_s=0.3)
    settings, pipeline, data = echo_job(tmp_path, {"up": remote(
        fault_server.url(scenario) + "/v1")}, 40)
    killed: list[int] = []
    others = set(worker_pids())  # an earlier test's pool, if it is still shutting down

    def kill() -> None:  # SIGKILL, as the OOM killer would: Ray restarts it, reruns its batch
        killed.extend(sorted(set(worker_pids()) - others)[:1])
        for pid in killed:
            os.kill(pid, signal.SIGKILL)

    when(lambda: len(scenario.requests) >= 6, kill)
    summary = run_file(str(pipeline), data, tmp_path / "out.jsonl", settings=settings,
                       batch_size=2, workers=2)

    assert killed, "no pool actor found to kill"
    exactly_once(tmp_path / "out.jsonl", 40)
    assert summary.succeeded == 40 and summary.failed == 0
    # a batch the killed worker held is asked again (once), unless the kill fell between
    # batches; either way each row is written once
    assert max(Counter(scenario.prompts()).values()) <= 2


@pytest.mark.slow
def test_a_killed_driver_reruns_with_every_row_exactly_once(
        tmp_path: Path, fault_server: FaultServer, ray_address: str) -> None:
    settings, pipeline, data = echo_job(tmp_path, {"up": remote(
        fault_server.url(Scenario(delay_s=0.1)) + "/v1")}, 60)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # the cluster's token, from ~/.ray
    args = ["run", str(pipeline), "--input", str(data), "--output", str(out), "--settings",
            str(settings), "--concurrency", "2", "--backend", "ray", "--address", ray_address,
            "--workers", "2"]
    log = tmp_path / "first.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "inferline", *args],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + 120
        while (not out.exists() or len(out.read_text().splitlines()) < 10) \
                and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert out.exists(), log.read_text()[-3000:]
    done_before = len(read_rows(out))
    assert 10 <= done_before < 60

    rerun = inferline(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    exactly_once(out, 60)
    assert f"({60 - done_before} ok, 0 failed, {done_before} already done)" in rerun.stderr


@pytest.mark.slow
def test_the_local_cluster_listens_on_loopback_only(ray_address: str) -> None:
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    ours = descendants(os.getpid())  # the GCS, raylet, agents and workers ray.init started
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True,
                               check=True).stdout.splitlines()
    mine = [line.split() for line in listening
            if any(f"pid={pid}," in line for pid in ours)]
    assert len(mine) >= 3, listening  # at least the GCS, and the raylet's two
    assert {fields[3].rsplit(":", 1)[0] for fields in mine} <= {
        "127.0.0.1", "[::ffff:127.0.0.1]"}, mine


def descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found.update(children)
        todo.extend(children)
    return found
