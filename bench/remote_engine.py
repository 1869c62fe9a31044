"""RemoteInferenceEngine vs a bare aiohttp loop, against a stub server that answers at once.

    .venv/bin/python bench/remote_engine.py   # ~1-2 min; writes bench/results/remote_engine.json

Throughput: 3,000 chat-completion requests at 64 in flight, alternating the two
clients (5 rounds each, after a warm-up) in one run; the figure is the median
requests/s of each and their ratio. The bare loop is what a careful user would
write: one session with the same connector limit, 64 workers, ``session.post(json=)``
and ``resp.json()``. Client CPU per request is reported too (the server runs in its
own process).

Memory: 100,000 queued conversations in a fresh process, written to a JSONL file by
the file runner (``infer(output_path=...)``'s, in waves of 64): peak RSS growth over
the RSS with the input conversations built (the input list itself is reported
separately). For contrast, ``ainfer`` on the same input, which must return every
output conversation.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

N_REQUESTS, CONCURRENCY, ROUNDS = 3000, 64, 5
N_MEMORY = 100_000
RESULTS = Path(__file__).parent / "results" / "remote_engine.json"
REPLY = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}).encode()


# -- the stub server (its own process) ------------------------------------------------


def _serve(port_out: Any) -> None:
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=REPLY, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port_out.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


def start_server() -> tuple[mp.Process, str]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_serve, args=(send,), daemon=True)
    proc.start()
    if not recv.poll(30):
        raise RuntimeError("stub server did not start")
    return proc, f"http://127.0.0.1:{recv.recv()}/v1/chat/completions"


# -- the two clients ---------------------------------------------------------------------


def prompts(n: int) -> list[str]:
    return [f"What is the capital of country number {i}?" for i in range(n)]


async def bare_loop(url: str, texts: list[str]) -> int:
    """What a user would write with aiohttp alone: same limit, same posts, parsed replies."""
    out: list[Any] = [None] * len(texts)
    todo = iter(range(len(texts)))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in todo:
            body = {"model": "stub", "max_tokens": 256, "temperature": 0.0,
                    "messages": [{"role": "user", "content": texts[i]}]}
            async with session.post(url, json=body) as resp:
                reply = await resp.json()
            out[i] = reply["choices"][0]["message"]["content"]

    connector = aiohttp.TCPConnector(limit=CONCURRENCY, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return sum(1 for o in out if o == "Paris.")


def engine_for(url: str) -> Any:
    from inferline.core.configs import ModelParams, RemoteParams
    from inferline.engines.openai_compat import RemoteInferenceEngine

    return RemoteInferenceEngine(ModelParams(model_name="stub"),
                                 remote_params=RemoteParams(api_url=url, num_workers=CONCURRENCY))


def timed(fn: Any) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def throughput(url: str) -> dict[str, Any]:
    from inferline.core.types import Conversation

    texts = prompts(N_REQUESTS)
    convs = [Conversation.from_prompt(t) for t in texts]
    engine = engine_for(url)
    runs: dict[str, list[tuple[float, float]]] = {"bare_aiohttp": [], "inferline": []}
    clients = {"bare_aiohttp": lambda: asyncio.run(bare_loop(url, texts)),
               "inferline": lambda: sum(c.messages[-1].content == "Paris."
                                        for c in engine.infer(convs))}
    for name, client in clients.items():  # warm-up: connections, imports, caches
        assert client() == N_REQUESTS, name
    for _ in range(ROUNDS):
        for name, client in clients.items():
            wall, cpu, ok = timed(client)
            assert ok == N_REQUESTS, name
            runs[name].append((wall, cpu))
    engine.close()
    return {name: {"requests_per_s": round(statistics.median(N_REQUESTS / w for w, _ in r), 1),
                   "client_cpu_us_per_request": round(
                       statistics.median(c for _, c in r) / N_REQUESTS * 1e6, 1),
                   "rounds_rps": [round(N_REQUESTS / w, 1) for w, _ in r]}
            for name, r in runs.items()}


# -- memory (a fresh process) ------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def memory_child(url: str, n: int, mode: str, out_path: str) -> None:
    """Run ``n`` conversations (``mode`` "stream" to a file, or "ainfer"); print RSS figures."""
    import gc

    from inferline.core.types import Conversation

    engine = engine_for(url)
    gc.collect()
    empty = _rss_mb()
    convs = [Conversation.from_prompt(t) for t in prompts(n)]
    gc.collect()
    base, peak, stop = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], _rss_mb())

    async def stream() -> int:
        from inferline.pipelines.runner import ConversationJob, arun_rows

        rows = ((i, i + 1, c.model_dump(mode="json", exclude_none=True))
                for i, c in enumerate(convs))
        summary = await arun_rows(ConversationJob(engine, None), rows, out_path, restart=True)
        return summary.succeeded

    async def run() -> int:
        done = await stream() if mode == "stream" else len(await engine.ainfer(convs))
        await engine.aclose()
        return done

    threading.Thread(target=sample, daemon=True).start()
    wall, _, done = timed(lambda: asyncio.run(run()))
    stop.set()
    print(json.dumps({"conversations": n, "completed": done, "wall_s": round(wall, 1),
                      "input_list_mib": round(base - empty, 1),
                      "baseline_rss_mib": round(base, 1), "peak_rss_mib": round(peak[0], 1),
                      "peak_rss_delta_mib": round(peak[0] - base, 1)}))


def memory(url: str, mode: str) -> dict[str, Any]:
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "inferline-bench-memory.jsonl"
    cmd = [sys.executable, __file__, "--memory", url, str(N_MEMORY), mode, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if mode == "stream":
        with open(out) as fh:
            result["output_lines"] = sum(1 for _ in fh)
        out.unlink()
    return result


def main() -> None:
    server, url = start_server()
    try:
        speed = throughput(url)
        mem = {mode: memory(url, mode) for mode in ("stream", "ainfer")}
    finally:
        server.terminate()
        server.join(10)
    ratio = speed["inferline"]["requests_per_s"] / speed["bare_aiohttp"]["requests_per_s"]
    result = {"requests": N_REQUESTS, "concurrency": CONCURRENCY, "rounds": ROUNDS, **speed,
              "ratio_inferline_to_bare": round(ratio, 3), "target_ratio": 0.85,
              "memory_100k": mem, "cpus": os.cpu_count(),
              "python": sys.version.split()[0], "aiohttp": aiohttp.__version__}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory":
        memory_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        main()
