"""The Ray backend against the local runner: the same pipeline over the stub server, and
over llama.cpp.

    flock /tmp/bench.lock .venv/bin/python bench/ray_backend.py [stub] [llamacpp]
    # ~10 min on 2 cores; bench/results/ray_backend.json (only the cases named: updated)

``local`` is what ``inferline run`` does (``arun_file``, container built per run); ``ray``
is ``run_file`` on a local Ray cluster of 2 CPUs started once beforehand (as a user's
``ray start`` cluster would be) by ``init_local``, as ``run_file`` starts one: on 127.0.0.1,
workers at niceness 0 (Ray's default of 15 starves them on a busy machine). Both run
waves (Ray: batches) of ``--concurrency`` rows over a small and a large input, alternating,
``rounds`` times; times are medians, wall clock from call to summary, output written and
fsynced; Ray's answers are checked against the local run's.

* ``stub``: the stub server (bench/remote_engine.py, its own process) answers at once, so
  the figures are the runners' own costs; 2 actors; the capital-quiz pipeline shape.
* ``llamacpp``: the packaged ``local_llamacpp`` engine (SmolLM2-135M, 2 threads), greedy,
  ``max_new_tokens: 8``; 1 actor (the actor's llama.cpp uses both cores, as the local run
  does; ``ray_2_actors_s``: 2 actors, each with 2 threads, at the large size).

Per case and ``--concurrency``:

* ``ratio_end_to_end``: local / ray time at the large size: what a user sees on this
  machine, Ray Data's start (actor pool, read tasks, model load) included.
* Ray's start and marginal rate from the two sizes: ``ray_start_s`` is the intercept,
  ``ray_marginal_rows_per_s`` the slope; ``ratio_marginal`` compares that slope with the
  local rate at the large size, and ``overhead_us_per_row`` is the cost per row on top of
  a local row.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remote_engine import start_server

RESULTS = Path(__file__).parent / "results" / "ray_backend.json"
COUNTRIES = Path(__file__).parents[1] / "examples" / "countries.jsonl"
PIPELINE = """\
name: bench
input: {fields: [country]}
steps:
  - template: {system: You answer in one word., user: "What is the capital of {{ country }}?"}
  - generate: {chain: main, generation: {max_new_tokens: %d, temperature: 0}}
  - postprocess: [strip, {regex: {pattern: "([A-Z][a-z]+)", group: 1}}]
output: answer
"""


@dataclass
class Case:
    settings: Path
    pipeline: Path
    inputs: dict[int, Path]  # rows -> input file
    batches: tuple[int, ...]  # --concurrency values
    workers: int  # actors
    rounds: int

    @property
    def small(self) -> int:
        return min(self.inputs)

    @property
    def large(self) -> int:
        return max(self.inputs)


def stub_case(folder: Path, url: str) -> Case:
    folder.mkdir()
    settings = folder / "settings.yaml"
    settings.write_text(f"engines:\n  stub: {{type: REMOTE, model: {{model_name: stub}}, "
                        f"remote_params: {{api_url: '{url}', num_workers: 64, "
                        "max_retries: 0}}\nchains:\n  main: [stub]\n")
    rows = [{"country": f"Country{i}"} for i in range(20_000)]
    return Case(settings, pipeline(folder, 16), inputs(folder, rows, (2_000, 20_000)),
                batches=(64, 256), workers=2, rounds=3)


def llama_case(folder: Path) -> Case:
    folder.mkdir()
    settings = folder / "settings.yaml"
    settings.write_text("chains:\n  main: [local_llamacpp]\n")  # the packaged engine
    countries = [json.loads(line) for line in COUNTRIES.read_text().splitlines()]
    rows = [{"country": countries[i % len(countries)]["country"]} for i in range(160)]
    return Case(settings, pipeline(folder, 8), inputs(folder, rows, (40, 160)),
                batches=(16,), workers=1, rounds=2)


def pipeline(folder: Path, max_new_tokens: int) -> Path:
    path = folder / "bench.yaml"
    path.write_text(PIPELINE % max_new_tokens)
    return path


def inputs(folder: Path, rows: list[dict[str, str]], sizes: tuple[int, ...]) -> dict[int, Path]:
    out = {}
    for n in sizes:
        out[n] = folder / f"in-{n}.jsonl"
        out[n].write_text("".join(json.dumps(row) + "\n" for row in rows[:n]))
    return out


def local(case: Case, n: int, batch: int, workers: int, out: Path) -> Any:
    from inferline.containers import running
    from inferline.pipelines.runner import arun_file

    async def main() -> Any:
        async with running(case.settings) as container:
            job = container.pipelines().load(str(case.pipeline))
            return await arun_file(job, case.inputs[n], out, concurrency=batch, restart=True)

    return asyncio.run(main())


def on_ray(case: Case, n: int, batch: int, workers: int, out: Path) -> Any:
    from inferline.integrations.ray import run_file

    return run_file(str(case.pipeline), case.inputs[n], out, settings=case.settings,
                    workers=workers, batch_size=batch, restart=True)


def answers(out: Path) -> dict[int, str]:
    return {row["_row"]: row["answer"] for row in map(json.loads, out.read_text().splitlines())}


def timed(runner: Any, case: Case, n: int, batch: int, out: Path,
          expect: dict[int, str] | None = None, workers: int = 0) -> float:
    start = time.perf_counter()
    summary = runner(case, n, batch, workers or case.workers, out)
    seconds = time.perf_counter() - start
    assert summary.succeeded == n and summary.failed == 0, summary.lines()
    if expect is not None:
        assert answers(out) == expect, "Ray's answers differ from the local run's"
    return seconds


def measure(case: Case, batch: int, out: Path) -> dict[str, Any]:
    small, large = case.small, case.large
    runs: dict[str, list[float]] = {f"{r}_{n}": [] for r in ("local", "ray") for n in
                                    case.inputs}
    expect: dict[int, dict[int, str]] = {}
    for _ in range(case.rounds):
        for n in case.inputs:
            runs[f"local_{n}"].append(timed(local, case, n, batch, out))
            expect[n] = answers(out)
            runs[f"ray_{n}"].append(timed(on_ray, case, n, batch, out, expect[n]))
    med = {name: statistics.median(times) for name, times in runs.items()}
    local_rate = large / med[f"local_{large}"]
    slope = (med[f"ray_{large}"] - med[f"ray_{small}"]) / (large - small)  # s per row
    result = {
        "local_rows_per_s": round(local_rate, 1),
        "ray_rows_per_s": round(large / med[f"ray_{large}"], 1),
        "ratio_end_to_end": round(med[f"local_{large}"] / med[f"ray_{large}"], 3),
        "ray_start_s": round(med[f"ray_{small}"] - slope * small, 2),
        "ray_marginal_rows_per_s": round(1 / slope, 1),
        "ratio_marginal": round(1 / slope / local_rate, 3),
        "overhead_us_per_row": round((slope - 1 / local_rate) * 1e6, 1),
        "median_s": {name: round(t, 3) for name, t in med.items()},
        "runs_s": {name: [round(t, 3) for t in times] for name, times in runs.items()}}
    if case.workers == 1:  # does a second actor (its own llama.cpp threads) help?
        result["ray_2_actors_s"] = round(timed(on_ray, case, large, batch, out, expect[large],
                                               workers=2), 3)
    return result


def main() -> None:
    import ray

    from inferline.integrations.ray import init_local

    server, url = start_server()
    init_local(num_cpus=2)  # on 127.0.0.1, as run_file starts one
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.jsonl"
            cases = {"stub": stub_case(Path(tmp) / "stub", url),
                     "llamacpp": llama_case(Path(tmp) / "llamacpp")}
            for name, case in cases.items():
                if sys.argv[1:] and name not in sys.argv[1:]:  # only the cases named
                    continue
                timed(on_ray, case, case.small, case.batches[0], out)  # warm-up
                results[name] = {"rows": sorted(case.inputs), "workers": case.workers,
                                 "rounds": case.rounds, "by_batch": {
                                     str(b): measure(case, b, out) for b in case.batches}}
                print(name, json.dumps({b: {k: v for k, v in r.items() if k != "runs_s"}
                                        for b, r in results[name]["by_batch"].items()},
                                       indent=2), flush=True)
    finally:
        ray.shutdown()
        server.terminate()
        server.join(10)
    if sys.argv[1:] and RESULTS.exists():  # the other cases as they were
        results = {**json.loads(RESULTS.read_text())["cases"], **results}
    result = {"cases": results, "target_ratio": 0.9, "cpus": os.cpu_count(),
              "load_avg_after": os.getloadavg(), "python": sys.version.split()[0],
              "ray": ray.__version__}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
