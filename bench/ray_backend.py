"""The Ray backend against the local runner: the same pipeline over the same stub server.

    .venv/bin/python bench/ray_backend.py   # ~3 min on 2 cores; bench/results/ray_backend.json

The stub server (bench/remote_engine.py, its own process) answers at once, so the
figures are the runners' own costs. The pipeline has the capital-quiz shape (template,
generate through a one-engine chain, strip + regex). ``local`` is what ``inferline run``
does (``arun_file``); ``ray`` is ``run_file`` on a local Ray cluster of 2 CPUs started
once beforehand (as a user's ``ray start`` cluster would be), 2 actors. Both run waves
(Ray: batches) of each of ``BATCHES`` rows, over ``SMALL`` and ``LARGE`` rows, alternating,
``ROUNDS`` times; times are medians, wall clock from call to summary, output written and
fsynced.

* ``ratio_end_to_end``: local / ray time at ``LARGE`` rows: what a user sees on this
  machine, Ray Data's start (actor pool, read tasks) included.
* Ray's start and marginal rate from the two sizes: ``start_s`` is the intercept,
  ``marginal_rows_per_s`` the slope; ``ratio_marginal`` compares that slope with the local
  rate, and ``overhead_us_per_row`` is the scheduling cost per row on top of a local row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from remote_engine import start_server

SMALL, LARGE, ROUNDS, WORKERS = 2_000, 20_000, 3, 2
BATCHES = (64, 256)  # --concurrency: inferline run's default, and a bigger wave
RESULTS = Path(__file__).parent / "results" / "ray_backend.json"
PIPELINE = """\
name: bench
input: {fields: [country]}
steps:
  - template: {system: You answer in one word., user: "What is the capital of {{ country }}?"}
  - generate: {chain: main, generation: {max_new_tokens: 16}}
  - postprocess: [strip, {regex: {pattern: "([A-Z][a-z]+)", group: 1}}]
output: answer
"""


def job(folder: Path, url: str) -> tuple[Path, Path, dict[int, Path]]:
    settings = folder / "settings.yaml"
    settings.write_text(f"engines:\n  stub: {{type: REMOTE, model: {{model_name: stub}}, "
                        f"remote_params: {{api_url: '{url}', num_workers: 64, "
                        "max_retries: 0}}\nchains:\n  main: [stub]\n")
    (folder / "bench.yaml").write_text(PIPELINE)
    inputs = {}
    for n in (SMALL, LARGE):
        inputs[n] = folder / f"in-{n}.jsonl"
        inputs[n].write_text("".join(json.dumps({"country": f"Country{i}"}) + "\n"
                                     for i in range(n)))
    return settings, folder / "bench.yaml", inputs


def local(batch: int, settings: Path, pipeline: Path, data: Path, out: Path) -> Any:
    from inferline.containers import running
    from inferline.pipelines.runner import arun_file

    async def main() -> Any:
        async with running(settings) as container:
            job = container.pipelines().load(str(pipeline))
            return await arun_file(job, data, out, concurrency=batch, restart=True)

    return asyncio.run(main())


def on_ray(batch: int, settings: Path, pipeline: Path, data: Path, out: Path) -> Any:
    from inferline.integrations.ray import run_file

    return run_file(str(pipeline), data, out, settings=settings, workers=WORKERS,
                    batch_size=batch, restart=True)


def timed(runner: Any, n: int, batch: int, *paths: Path) -> float:
    start = time.perf_counter()
    summary = runner(batch, *paths)
    seconds = time.perf_counter() - start
    assert summary.succeeded == n and summary.failed == 0, summary.lines()
    answers = {json.loads(line)["answer"] for line in paths[-1].read_text().splitlines()}
    assert answers == {"Paris"}, answers
    return seconds


def measure(batch: int, settings: Path, pipeline: Path, inputs: dict[int, Path],
            out: Path) -> dict[str, Any]:
    runs: dict[str, list[float]] = {f"{r}_{n}": [] for r in ("local", "ray") for n in inputs}
    for _ in range(ROUNDS):
        for n, data in inputs.items():
            runs[f"local_{n}"].append(timed(local, n, batch, settings, pipeline, data, out))
            runs[f"ray_{n}"].append(timed(on_ray, n, batch, settings, pipeline, data, out))
    med = {name: statistics.median(times) for name, times in runs.items()}
    local_rate = LARGE / med[f"local_{LARGE}"]
    slope = (med[f"ray_{LARGE}"] - med[f"ray_{SMALL}"]) / (LARGE - SMALL)  # s per row
    return {
        "local_rows_per_s": round(local_rate, 1),
        "ray_rows_per_s": round(LARGE / med[f"ray_{LARGE}"], 1),
        "ratio_end_to_end": round(med[f"local_{LARGE}"] / med[f"ray_{LARGE}"], 3),
        "ray_start_s": round(med[f"ray_{SMALL}"] - slope * SMALL, 2),
        "ray_marginal_rows_per_s": round(1 / slope, 1),
        "ratio_marginal": round(1 / slope / local_rate, 3),
        "overhead_us_per_row": round((slope - 1 / local_rate) * 1e6, 1),
        "median_s": {name: round(t, 3) for name, t in med.items()},
        "runs_s": {name: [round(t, 3) for t in times] for name, times in runs.items()}}


def main() -> None:
    import ray

    server, url = start_server()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings, pipeline, inputs = job(Path(tmp), url)
            out = Path(tmp) / "out.jsonl"
            timed(on_ray, SMALL, 64, settings, pipeline, inputs[SMALL], out)  # warm-up
            by_batch = {str(b): measure(b, settings, pipeline, inputs, out) for b in BATCHES}
    finally:
        ray.shutdown()
        server.terminate()
        server.join(10)
    result = {"rows": [SMALL, LARGE], "workers": WORKERS, "rounds": ROUNDS, "target_ratio": 0.9,
              "by_batch": by_batch, "cpus": os.cpu_count(), "load_avg_after": os.getloadavg(),
              "python": sys.version.split()[0], "ray": ray.__version__}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({b: {k: v for k, v in r.items() if k != "runs_s"}
                      for b, r in by_batch.items()}, indent=2))


if __name__ == "__main__":
    main()
