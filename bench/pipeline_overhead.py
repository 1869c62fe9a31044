"""What a pipeline costs on top of its engine, and what a dead first engine costs.

    .venv/bin/python bench/pipeline_overhead.py   # ~1 min; bench/results/pipeline_overhead.json

The engine is a RemoteInferenceEngine on a stub server (its own process) that answers
at once, so the engine's own cost is as small as an HTTP engine's gets.

* Throughput: 3,000 rows of the capital-quiz shape. ``direct`` is the same job written
  by hand against the engine: f-string prompts, ``engine.ainfer``, strip + regex on
  each answer. ``pipeline`` is ``run_batch``: sandboxed templates (system + user),
  generate through a one-engine fallback chain (attempts, breaker, served_by), strip +
  regex, output rows with ``_meta``. ``engine_only`` is ``engine.ainfer`` on prompts
  built beforehand, for reference. Rounds alternate, back to back with no forced
  garbage collection, so each client pays the collections its own allocations cause
  (as a long-running job does). Rows/s are medians; the ratio is the median of each
  round's direct/pipeline ratio (adjacent runs, so the machine's drift cancels), with
  the ratio of the medians beside it; the pipeline's overhead per row in µs.
* Latency: 300 rows one at a time (``arun``), median per row, for the chain [stub],
  [dead, stub] where ``dead`` refuses connections, and the same with dead's circuit open.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from remote_engine import start_server

N_ROWS, CONCURRENCY, ROUNDS, N_LATENCY = 3000, 64, 21, 300
RESULTS = Path(__file__).parent / "results" / "pipeline_overhead.json"
PIPELINE = {
    "name": "bench", "input": {"fields": ["country"]}, "output": "answer",
    "steps": [{"template": {"system": "You answer in one word.",
                            "user": "What is the capital of {{ country }}?"}},
              {"generate": {"chain": "main", "generation": {"max_new_tokens": 16}}},
              {"postprocess": ["strip", {"regex": {"pattern": "([A-Z][a-z]+)", "group": 1}}]}]}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def catalog(url: str, chain: list[str], threshold: int) -> Any:
    from inferline.engines.catalog import EngineCatalog
    from inferline.pipelines import ChainCatalog
    from inferline.settings.model import ChainSettings, EngineSettings

    def remote(api_url: str) -> EngineSettings:
        return EngineSettings.model_validate({
            "type": "REMOTE", "model": {"model_name": "stub"}, "generation": {"max_new_tokens": 16},
            "remote_params": {"api_url": api_url, "num_workers": CONCURRENCY, "max_retries": 0}})

    engines = {"stub": remote(url), "dead": remote(f"http://127.0.0.1:{closed_port()}/v1")}
    spec = ChainSettings(engines=chain, circuit_breaker={"failure_threshold": threshold,
                                                         "cooldown_s": 1e9})
    return ChainCatalog({"main": spec}, EngineCatalog(engines))


def pipeline(chains: Any) -> Any:
    from inferline.pipelines import Pipeline, PipelineSpec

    return Pipeline(PipelineSpec.from_dict(PIPELINE), chains)


def throughput(url: str) -> dict[str, Any]:
    import re

    from inferline.core.types import Conversation

    rows = [{"country": f"Country{i}"} for i in range(N_ROWS)]
    chains = catalog(url, ["stub"], threshold=5)
    engine, pipe = chains.engines.get("stub"), pipeline(chains)
    pattern = re.compile("([A-Z][a-z]+)")

    def by_hand() -> list[str]:
        convs = [Conversation.from_prompt(f"What is the capital of {r['country']}?",
                                          system="You answer in one word.") for r in rows]
        return [pattern.search(out.messages[-1].text.strip()).group(1)  # type: ignore[union-attr]
                for out in engine.infer(convs)]

    prebuilt = [Conversation.from_prompt(f"What is the capital of {r['country']}?",
                                         system="You answer in one word.") for r in rows]
    clients = {"direct": by_hand, "pipeline": lambda: pipe.run_batch(rows),
               "engine_only": lambda: engine.infer(prebuilt)}
    runs: dict[str, list[float]] = {name: [] for name in clients}
    for name, client in clients.items():  # warm-up
        assert len(client()) == N_ROWS, name
    for _ in range(ROUNDS):
        for name, client in clients.items():
            start = time.perf_counter()
            out = client()
            runs[name].append(time.perf_counter() - start)
            assert len(out) == N_ROWS
    assert by_hand()[:3] == ["Paris"] * 3
    assert all(o.output["answer"] == "Paris" for o in pipe.run_batch(rows[:10]))
    engine.close()
    med = {name: statistics.median(r) for name, r in runs.items()}
    paired = statistics.median(d / p for d, p in zip(runs["direct"], runs["pipeline"], strict=True))
    return {"direct_rows_per_s": round(N_ROWS / med["direct"], 1),
            "pipeline_rows_per_s": round(N_ROWS / med["pipeline"], 1),
            "engine_only_rows_per_s": round(N_ROWS / med["engine_only"], 1),
            "ratio_pipeline_to_direct": round(paired, 3),
            "ratio_of_medians": round(med["direct"] / med["pipeline"], 3),
            "target_ratio": 0.9,
            "overhead_us_per_row": round((med["pipeline"] - med["direct"]) / N_ROWS * 1e6, 1),
            "rounds_s": {n: [round(t, 3) for t in r] for n, r in runs.items()}}


def latency(url: str, chain: list[str], threshold: int) -> float:
    """Median ms per row, one row at a time."""
    chains = catalog(url, chain, threshold)
    pipe = pipeline(chains)

    async def run() -> list[float]:
        times = []
        for i in range(N_LATENCY + 20):
            start = time.perf_counter()
            out = await pipe.arun({"country": f"C{i}"})
            times.append(time.perf_counter() - start)
            assert out["_meta"]["served_by"] == "stub"
        await chains.engines.aclose()
        return times[20:]  # warm-up dropped

    return round(statistics.median(asyncio.run(run())) * 1000, 3)


def main() -> None:
    server, url = start_server()
    try:
        speed = throughput(url)
        lat = {"stub_only_ms": latency(url, ["stub"], 5),
               "dead_first_ms": latency(url, ["dead", "stub"], 10**9),
               "dead_first_circuit_open_ms": latency(url, ["dead", "stub"], 1)}
    finally:
        server.terminate()
        server.join(10)
    lat["dead_first_adds_ms"] = round(lat["dead_first_ms"] - lat["stub_only_ms"], 3)
    lat["circuit_open_adds_ms"] = round(lat["dead_first_circuit_open_ms"] - lat["stub_only_ms"], 3)
    result = {"rows": N_ROWS, "concurrency": CONCURRENCY, "rounds": ROUNDS, **speed,
              "latency_one_row_at_a_time": lat, "cpus": os.cpu_count(),
              "python": sys.version.split()[0]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
