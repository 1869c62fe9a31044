"""Load on ``inferline serve`` over loopback: the gateway vs calling its upstream directly.

    .venv/bin/python bench/gateway_load.py     # ~1 min; writes bench/results/gateway_load.json

A stub OpenAI-style server (its own process) answers at once. The gateway is the
real ``inferline serve`` CLI (its own process) with one chain whose only engine is
a RemoteInferenceEngine pointing at the stub. The client (this process) is aiohttp
with 64 concurrent workers; each round is 3,000 chat-completion requests. Rounds
alternate direct and gateway (3 each, after a warm-up), so both see the same machine;
the figures are medians over rounds, and the overhead is their ratio. The machine
has 2 cores shared by the client, the gateway and the stub, so absolute figures
are a floor; the ratio is the point. Every non-200 answer counts as an error.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

N_REQUESTS, CONCURRENCY, ROUNDS, WARMUP = 3000, 64, 3, 300
RESULTS = Path(__file__).parent / "results" / "gateway_load.json"
REPLY = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}).encode()


def _stub(port_out: Any) -> None:
    """The upstream: answers every chat completion at once with the same reply."""
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


def start_stub() -> tuple[mp.Process, str]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_stub, args=(send,), daemon=True)
    proc.start()
    if not recv.poll(30):
        raise RuntimeError("stub server did not start")
    return proc, f"http://127.0.0.1:{recv.recv()}/v1"


def gateway_settings(stub_url: str, folder: Path) -> Path:
    path = folder / "settings.yaml"
    path.write_text(f"""\
log: {{level: WARNING}}
engines:
  stub:
    type: REMOTE
    model: {{model_name: stub}}
    generation: {{max_new_tokens: 8}}
    remote_params: {{api_url: "{stub_url}", num_workers: {CONCURRENCY}, max_retries: 0}}
chains:
  default: [stub]
server: {{max_concurrency: {CONCURRENCY * 2}}}
""")
    return path


def start_gateway(settings: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``inferline serve`` on a free port; its URL from the line it prints on stderr."""
    exe = Path(sys.executable).with_name("inferline")
    log_path = settings.with_name("gateway.log")
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would stall it
        proc = subprocess.Popen([str(exe), "serve", "--settings", str(settings), "--port", "0"],
                                stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text().splitlines():
            if "serving on" in line:
                return proc, line.rsplit(" ", 1)[-1].strip()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"inferline serve did not start:\n{log_path.read_text()}")


async def load(session: aiohttp.ClientSession, url: str, n: int) -> dict[str, Any]:
    """``n`` requests from ``CONCURRENCY`` workers: requests/s, p50/p99 latency, errors."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            body = {"model": "default", "max_tokens": 8, "messages": [
                {"role": "user", "content": f"What is the capital of country number {i}?"}]}
            start = time.perf_counter()
            async with session.post(url, json=body) as resp:
                await resp.read()
                errors += resp.status != 200
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    wall = time.perf_counter() - start
    qs = statistics.quantiles(latencies, n=100)
    return {"requests": n, "rps": n / wall, "p50_ms": qs[49] * 1000, "p99_ms": qs[98] * 1000,
            "errors": errors}


async def measure(direct_url: str, gateway_url: str) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
    urls = {"direct": direct_url, "gateway": gateway_url}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in urls.values():
            await load(session, url, WARMUP)
        for _ in range(ROUNDS):
            for name, url in urls.items():
                runs[name].append(await load(session, url, N_REQUESTS))
    return runs


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    med = {name: {k: statistics.median(r[k] for r in rounds) for k in ("rps", "p50_ms", "p99_ms")}
           for name, rounds in runs.items()}
    errors = {name: sum(r["errors"] for r in rounds) for name, rounds in runs.items()}
    return {
        "setup": {"requests_per_round": N_REQUESTS, "concurrency": CONCURRENCY, "rounds": ROUNDS,
                  "cpus": len(os.sched_getaffinity(0))},
        "direct": {**{k: round(v, 2) for k, v in med["direct"].items()},
                   "errors": errors["direct"]},
        "gateway": {**{k: round(v, 2) for k, v in med["gateway"].items()},
                    "errors": errors["gateway"]},
        "overhead": {"rps_ratio": round(med["direct"]["rps"] / med["gateway"]["rps"], 2),
                     "p50_ratio": round(med["gateway"]["p50_ms"] / med["direct"]["p50_ms"], 2),
                     "p99_ratio": round(med["gateway"]["p99_ms"] / med["direct"]["p99_ms"], 2)},
        "rounds": runs,
    }


def main() -> None:
    stub, stub_url = start_stub()
    with tempfile.TemporaryDirectory() as folder:
        gateway, gateway_url = start_gateway(gateway_settings(stub_url, Path(folder)))
        try:
            runs = asyncio.run(measure(f"{stub_url}/chat/completions",
                                       f"{gateway_url}/v1/chat/completions"))
        finally:
            os.killpg(gateway.pid, signal.SIGTERM)
            gateway.wait(30)
            stub.terminate()
    result = summarize(runs)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))


if __name__ == "__main__":
    main()
