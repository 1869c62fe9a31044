"""The gateway against calling its upstream directly, a minimal proxy and LiteLLM's proxy.

    .venv/bin/python bench/gateway_load.py     # ~3 min; writes bench/results/gateway_load.json

Everything runs on loopback, each server in its own process: a stub OpenAI-style upstream
(a chat completion at once; with ``stream`` 64 deltas 20 ms apart, each stamped with the
stub's clock), ``inferline serve`` (the real CLI; one chain whose only engine is a
RemoteInferenceEngine pointing at the stub), the same with ``--workers 2`` (two processes on
one port, one per core here), a minimal aiohttp proxy (posts the body upstream
with one ClientSession and hands the bytes back: the floor for any Python gateway), and,
when installed, LiteLLM's proxy (1 worker, the same stub). The client is this process
(aiohttp). Rounds alternate the targets, so all see the same machine. Measured:

* one client: added latency (median and p99 over every request, minus direct's);
* 64 clients: requests/s (median of rounds) as a fraction of direct, and p99;
* streaming: one stream at a time, added time to first token and added inter-chunk p99;
  256 concurrent streams, with every delta counted (a missing one is a dropped chunk);
* a remote-only gateway's idle RSS, and the time from process start to ``/ready`` 200.

LiteLLM is an optional, bench-only dependency, kept out of the project's venv::

    python3 -m venv build/litellm-venv
    flock /tmp/pip.lock build/litellm-venv/bin/pip install 'litellm[proxy]'

Without it the LiteLLM column is skipped with a note. The machine has 2 cores shared by the
client, the servers and the stub: absolute figures are a floor; compare within one run.
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
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "gateway_load.json"
LITELLM = ROOT / "build" / "litellm-venv" / "bin" / "litellm"
ONE_ROUNDS, ONE_N = 10, 50  # one client: 10 rounds x 50 requests per target
LOAD_ROUNDS, LOAD_N, LOAD_N_SLOW, CONCURRENCY = 3, 3000, 400, 64
STREAM_ROUNDS, STREAMS, DELTAS, DELTA_S = 8, 256, 64, 0.02
STARTS = 3  # fresh gateways for RSS and time to ready
WORKERS = 256  # upstream connections of the gateway and the floor (256 streams at once)
REPLY = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}).encode()


def _event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "stub",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _stub(port_out: Any) -> None:
    """The upstream: a reply at once, or a stream of stamped deltas ``DELTA_S`` apart."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if not body.get("stream"):
            return web.Response(body=REPLY, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(DELTAS):
            if i:
                await asyncio.sleep(DELTA_S)
            await resp.write(_event({"content": f"{time.monotonic():.6f} "}))
        await resp.write(_event({}, "stop", usage={"prompt_tokens": 12,
                                                   "completion_tokens": DELTAS}))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    _serve(port_out, chat)


def _floor(port_out: Any, upstream: str) -> None:
    """A minimal proxy: the body posted upstream with one session, the bytes handed back."""
    from aiohttp import web

    session: aiohttp.ClientSession | None = None

    async def chat(request: web.Request) -> web.StreamResponse:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=WORKERS))
        data = await request.read()
        async with session.post(upstream, data=data,
                                headers={"Content-Type": "application/json"}) as up:
            if up.content_type != "text/event-stream":
                return web.Response(body=await up.read(), status=up.status,
                                    content_type="application/json")
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for piece in up.content.iter_any():
                await resp.write(piece)
            return resp

    _serve(port_out, chat)


def _serve(port_out: Any, handler: Any) -> None:
    from aiohttp import web

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port_out.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


def start_process(target: Callable[..., None], *args: Any) -> tuple[mp.Process, str]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(send, *args), daemon=True)
    proc.start()
    if not recv.poll(30):
        raise RuntimeError(f"{target.__name__} did not start")
    return proc, f"http://127.0.0.1:{recv.recv()}"


def gateway_settings(stub_url: str, folder: Path) -> Path:
    """Log settings are the defaults (INFO, console lines): what ``inferline serve`` does."""
    path = folder / "settings.yaml"
    path.write_text(f"""\
engines:
  stub:
    type: REMOTE
    model: {{model_name: stub}}
    generation: {{max_new_tokens: 8}}
    remote_params: {{api_url: "{stub_url}/v1", num_workers: {WORKERS}, max_retries: 0}}
chains:
  default: [stub]
server: {{max_concurrency: {WORKERS * 2}}}
""")
    return path


def _wait_for_line(proc: subprocess.Popen[bytes], log_path: Path, marker: str) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text(errors="replace").splitlines():
            if marker in line:
                return line
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"{log_path.name} did not start:\n{log_path.read_text()[-3000:]}")


def start_gateway(settings: Path, tag: str = "", workers: int = 1,
                  env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``inferline serve`` on a free port; its URL from the line it prints on stderr."""
    exe = Path(sys.executable).with_name("inferline")
    log_path = settings.with_name(f"gateway{tag}.log")
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would stall it
        proc = subprocess.Popen([str(exe), "serve", "--settings", str(settings), "--port", "0",
                                 "--workers", str(workers)],
                                stdout=log, stderr=log, start_new_session=True, env=env)
    return proc, _wait_for_line(proc, log_path, "serving on").rsplit(" ", 1)[-1].strip()


def start_litellm(stub_url: str, folder: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """LiteLLM's proxy, 1 worker, one model ``default`` on the stub; also its time to ready."""
    config, log_path = folder / "litellm.yaml", folder / "litellm.log"
    config.write_text(f"""\
model_list:
  - model_name: default
    litellm_params: {{model: openai/stub, api_base: "{stub_url}/v1", api_key: none}}
litellm_settings: {{telemetry: false}}
""")
    port = _free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           # no key, like the gateway here (loopback): LiteLLM refuses that unless told
           "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    began = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(LITELLM), "--config", str(config), "--port", str(port),
                                 "--host", "127.0.0.1", "--num_workers", "1"],
                                stdout=log, stderr=log, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    ready = _time_to_ready(proc, f"{url}/health/readiness", began)
    return proc, url, ready


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _time_to_ready(proc: subprocess.Popen[bytes], url: str, began: float) -> float:
    """Seconds from ``began`` (the process start) to ``url`` answering 200."""
    while time.monotonic() - began < 120 and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - began
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} never answered 200")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def startups(stub_url: str, folder: Path) -> dict[str, Any]:
    """Fresh remote-only gateways: time from process start to /ready 200, and idle RSS."""
    settings, exe = gateway_settings(stub_url, folder), Path(sys.executable).with_name("inferline")
    port, ready, rss = _free_port(), [], []
    for i in range(STARTS):
        log_path = folder / f"start{i}.log"
        began = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(exe), "serve", "--settings", str(settings), "--port",
                                     str(port)], stdout=log, stderr=log, start_new_session=True)
        try:
            ready.append(_time_to_ready(proc, f"http://127.0.0.1:{port}/ready", began))
            time.sleep(1.0)  # idle
            rss.append(rss_mb(proc.pid))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    return {"ready_s": round(statistics.median(ready), 3), "idle_rss_mb": round(
        statistics.median(rss), 1), "ready_s_all": [round(r, 3) for r in ready],
        "idle_rss_mb_all": [round(r, 1) for r in rss]}


def _body(i: int, stream: bool = False) -> dict[str, Any]:
    return {"model": "default", "max_tokens": 8, "stream": stream, "messages": [
        {"role": "user", "content": f"What is the capital of country number {i}?"}]}


async def one_client(session: aiohttp.ClientSession, url: str, n: int) -> dict[str, Any]:
    """``n`` requests one after the other: each one's latency, and the gateway's own
    account of its overhead (the header) where it sends one."""
    latencies, overheads, errors = [], [], 0
    for i in range(n):
        start = time.perf_counter()
        async with session.post(url, json=_body(i)) as resp:
            await resp.read()
            errors += resp.status != 200
        latencies.append(time.perf_counter() - start)
        if (header := resp.headers.get("x-inferline-overhead-ms")) is not None:
            overheads.append(float(header) / 1000)
    return {"latencies": latencies, "overheads": overheads, "errors": errors}


async def load(session: aiohttp.ClientSession, url: str, n: int) -> dict[str, Any]:
    """``n`` requests from ``CONCURRENCY`` workers: requests/s, p50/p99 latency, errors."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            start = time.perf_counter()
            async with session.post(url, json=_body(i)) as resp:
                await resp.read()
                errors += resp.status != 200
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    wall = time.perf_counter() - start
    qs = statistics.quantiles(latencies, n=100)
    return {"requests": n, "rps": n / wall, "p50_ms": qs[49] * 1000, "p99_ms": qs[98] * 1000,
            "errors": errors}


async def stream_once(session: aiohttp.ClientSession, url: str, i: int) -> dict[str, Any]:
    """One stream: time to the first delta, the gaps between deltas, each delta's delay
    from the stub's stamp to its arrival here, and how many arrived."""
    start = time.perf_counter()
    arrivals: list[float] = []
    delays: list[float] = []
    try:
        async with session.post(url, json=_body(i, stream=True)) as resp:
            if resp.status != 200:
                return {"error": True, "deltas": 0}
            async for line in resp.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                now, choices = time.perf_counter(), json.loads(line[6:]).get("choices") or []
                content = choices[0].get("delta", {}).get("content") if choices else None
                if content:
                    arrivals.append(now)
                    delays.append(time.monotonic() - float(content))
    except (aiohttp.ClientError, TimeoutError):
        return {"error": True, "deltas": len(arrivals)}
    return {"error": False, "deltas": len(arrivals),
            "ttft": arrivals[0] - start if arrivals else None,
            "gaps": [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)],
            "delays": delays}


async def streams(session: aiohttp.ClientSession, url: str, n: int) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(stream_once(session, url, i) for i in range(n))))


def _q(values: list[float], q: int) -> float:
    """The q-th percentile (q=50: the median)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def measure(urls: dict[str, str]) -> dict[str, Any]:
    slow = {"litellm"}
    out: dict[str, Any] = {"one_client": {}, "load": {}, "stream_one": {}, "stream_many": {}}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                     timeout=timeout) as one:
        for url in urls.values():  # warm-up: connections, first-request paths
            await one_client(one, url, 20)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        for _ in range(ONE_ROUNDS):
            for name, url in urls.items():
                runs[name].append(await one_client(one, url, ONE_N))
        for name, rounds in runs.items():
            lat = [x for r in rounds for x in r["latencies"]]
            over = [x for r in rounds for x in r["overheads"]]
            out["one_client"][name] = {
                "requests": len(lat), "p50_ms": _ms(_q(lat, 50)), "p99_ms": _ms(_q(lat, 99)),
                "errors": sum(r["errors"] for r in rounds),
                **({"overhead_header_p50_ms": _ms(_q(over, 50)),
                    "overhead_header_p99_ms": _ms(_q(over, 99))} if over else {})}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY),
                                     timeout=timeout) as many:
        for url in urls.values():
            await load(many, url, 300)
        loads: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        for _ in range(LOAD_ROUNDS):
            for name, url in urls.items():
                loads[name].append(await load(many, url, LOAD_N_SLOW if name in slow else LOAD_N))
        for name, rounds in loads.items():
            out["load"][name] = {**{k: round(statistics.median(r[k] for r in rounds), 2)
                                    for k in ("rps", "p50_ms", "p99_ms")},
                                 "errors": sum(r["errors"] for r in rounds), "rounds": rounds}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        ones: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        for r in range(STREAM_ROUNDS):
            for name, url in urls.items():
                ones[name].append(await stream_once(session, url, r))
        out["stream_one"] = {name: _stream_summary(rs) for name, rs in ones.items()}
        for name, url in urls.items():
            out["stream_many"][name] = _stream_summary(await streams(session, url, STREAMS))
    return out


def _stream_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in results if not r["error"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    delays = [d for r in ok for d in r["delays"]]
    return {"streams": len(results), "errors": len(results) - len(ok),
            "dropped_chunks": sum(DELTAS - r["deltas"] for r in results),
            "ttft_p50_ms": _ms(_q(ttft, 50)) if ttft else None,
            "ttft_p99_ms": _ms(_q(ttft, 99)) if ttft else None,
            "gap_p50_ms": _ms(_q(gaps, 50)) if gaps else None,
            "gap_p99_ms": _ms(_q(gaps, 99)) if gaps else None,
            "delay_p50_ms": _ms(_q(delays, 50)) if delays else None,
            "delay_p99_ms": _ms(_q(delays, 99)) if delays else None}


def compare(m: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Each target against direct: what it adds, and the fraction of direct's throughput."""
    one, load_, s1, sn = m["one_client"], m["load"], m["stream_one"], m["stream_many"]
    d = "direct"
    out: dict[str, Any] = {}
    for name in names:
        if name == d:
            continue
        out[name] = {
            "added_p50_ms": round(one[name]["p50_ms"] - one[d]["p50_ms"], 3),
            "added_p99_ms": round(one[name]["p99_ms"] - one[d]["p99_ms"], 3),
            "rps_ratio": round(load_[name]["rps"] / load_[d]["rps"], 3),
            "load_p99_ms": load_[name]["p99_ms"],
            "added_ttft_ms": _sub(s1[name]["ttft_p50_ms"], s1[d]["ttft_p50_ms"]),
            "added_gap_p99_ms": _sub(s1[name]["gap_p99_ms"], s1[d]["gap_p99_ms"]),
            "added_delay_p99_ms": _sub(s1[name]["delay_p99_ms"], s1[d]["delay_p99_ms"]),
            "many_added_ttft_p50_ms": _sub(sn[name]["ttft_p50_ms"], sn[d]["ttft_p50_ms"]),
            "many_added_gap_p99_ms": _sub(sn[name]["gap_p99_ms"], sn[d]["gap_p99_ms"]),
            "many_dropped_chunks": sn[name]["dropped_chunks"],
            "many_errors": sn[name]["errors"],
        }
    return out


def _sub(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def goals(cmp: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    gw = cmp["gateway"]
    checks = {
        "one_client_added_p50_ms<=0.5": gw["added_p50_ms"] <= 0.5,
        "one_client_added_p99_ms<=1.0": gw["added_p99_ms"] <= 1.0,
        "64_clients_rps_ratio>=0.4": gw["rps_ratio"] >= 0.4,
        "stream_added_ttft_ms<=1": gw["added_ttft_ms"] is not None and gw["added_ttft_ms"] <= 1,
        "stream_added_gap_p99_ms<=0.5": (gw["added_gap_p99_ms"] is not None
                                         and gw["added_gap_p99_ms"] <= 0.5),
        "256_streams_no_dropped_chunk": gw["many_dropped_chunks"] == 0 and gw["many_errors"] == 0,
        "idle_rss_mb<=80": start["idle_rss_mb"] <= 80,
        "ready_s<=1": start["ready_s"] <= 1,
    }
    return {k: "met" if v else "not met" for k, v in checks.items()}


def main() -> None:
    procs: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            stub, stub_url = start_process(_stub)
            floor, floor_url = start_process(_floor, f"{stub_url}/v1/chat/completions")
            procs += [stub, floor]
            start = startups(stub_url, folder)
            gateway, gateway_url = start_gateway(gateway_settings(stub_url, folder))
            # the same gateway as 2 processes on one port (--workers 2): one per core here
            gateway2, gateway2_url = start_gateway(gateway_settings(stub_url, folder), "2", 2)
            procs += [gateway, gateway2]
            urls = {"direct": stub_url, "gateway": gateway_url, "gateway_2_workers": gateway2_url,
                    "floor": floor_url}
            litellm: dict[str, Any] = {}
            if LITELLM.exists():
                proc, url, ready = start_litellm(stub_url, folder)
                procs.append(proc)
                urls["litellm"] = url
                time.sleep(1.0)
                litellm = {"ready_s": round(ready, 3), "idle_rss_mb": round(rss_mb(proc.pid), 1)}
            else:
                print(f"note: no LiteLLM column ({LITELLM} missing); see this file's docstring",
                      file=sys.stderr)
            m = asyncio.run(measure({k: f"{v}/v1/chat/completions" for k, v in urls.items()}))
            start["rss_after_load_mb"] = round(rss_mb(gateway.pid), 1)
        finally:
            for proc in procs:
                if isinstance(proc, subprocess.Popen):
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(30)
                else:
                    proc.terminate()
    names = list(urls)
    cmp = compare(m, names)
    result = {
        "setup": {"one_client": f"{ONE_ROUNDS} rounds x {ONE_N} requests",
                  "load": f"{LOAD_ROUNDS} rounds x {LOAD_N} requests ({LOAD_N_SLOW} for LiteLLM), "
                          f"{CONCURRENCY} clients",
                  "stream": f"{DELTAS} deltas {DELTA_S * 1000:.0f} ms apart; {STREAM_ROUNDS} "
                            f"single streams, then {STREAMS} at once",
                  "cpus": len(os.sched_getaffinity(0)), "loadavg": Path("/proc/loadavg").read_text()
                  .split()[:3], "targets": names},
        "compare": cmp, "gateway_start": start, "litellm_start": litellm or None,
        "goals": goals(cmp, start), **m}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("setup", "compare", "gateway_start",
                                             "litellm_start", "goals")}, indent=2))


if __name__ == "__main__":
    main()
