"""Gateway replicas that behave as one: ``inferline serve --workers``, and replicas sharing
circuit breakers and rate limits through a real Redis (and serving on without it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from inferline.containers import Container, build_container, started
from inferline.server import ApiKeys, create_app
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.gateway import start_app
from tests.fixtures.redis_server import RedisServer

pytestmark = pytest.mark.slow

INFERLINE = str(Path(sys.executable).with_name("inferline"))


def engine_yaml(name: str, url: str, **remote_params: Any) -> str:
    params = ", ".join(f"{k}: {v}" for k, v in {"max_retries": 0, "num_workers": 16,
                                                 **remote_params}.items())
    return (f"  {name}: {{type: REMOTE, model: {{model_name: m}}, "
            f"remote_params: {{api_url: \"{url}/v1\", {params}}}}}\n")


def write_settings(folder: Path, engines: str, chains: str, extra: str = "") -> Path:
    path = folder / "settings.yaml"
    path.write_text(f"engines:\n{engines}chains:\n{chains}{extra}")
    return path


async def chat(url: str, model: str, prompt: str) -> tuple[int, dict[str, Any], str]:
    """One chat request on a fresh connection: status, body, the worker that answered."""
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": prompt}]}
    async with (aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
                http.post(f"{url}/v1/chat/completions", json=body) as resp):
        return resp.status, await resp.json(), resp.headers["x-inferline-worker"]


async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


# -- inferline serve --workers N ----------------------------------------------------------

def _wait_for_url(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text().splitlines():
            if line.startswith("inferline: serving on"):
                return line.rsplit(" ", 1)[-1]
        time.sleep(0.05)
    raise AssertionError(f"inferline serve did not start:\n{log_path.read_text()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_workers_share_one_port_and_all_drain_on_sigterm(tmp_path, fault_server) -> None:
    scenario = Scenario(delay_s=1.5)
    path = write_settings(tmp_path, engine_yaml("slow", fault_server.url(scenario)),
                          "  main: [slow]\n", "server: {shutdown_grace_s: 20}\n")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([INFERLINE, "serve", "--settings", str(path), "--port", "0",
                                 "--workers", "2"], stderr=log, start_new_session=True)
    workers: set[str] = set()
    try:
        url = await asyncio.to_thread(_wait_for_url, proc, log_path)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(40):  # each on a new connection, which the kernel spreads
                async with http.get(f"{url}/health") as resp:
                    workers.add(resp.headers["x-inferline-worker"])
        assert len(workers) == 2 and str(proc.pid) not in workers
        tasks = [asyncio.create_task(chat(url, "main", f"q{i}")) for i in range(6)]
        while scenario.in_flight < 6:  # all six are upstream now
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # the parent only: it passes the signal on
        replies = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert sorted(body["choices"][0]["message"]["content"] for _, body, _ in replies) == [
            f"echo: q{i}" for i in range(6)]
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert not [pid for pid in workers if _alive(int(pid))]  # no orphan left behind
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)


# -- replicas sharing one Redis ----------------------------------------------------------

@dataclass
class Replica:
    url: str
    container: Container


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start gateway replicas (each its own container and app) over one settings file."""
    async with contextlib.AsyncExitStack() as stack:
        async def start(path: Path, count: int = 2) -> list[Replica]:
            out = []
            for _ in range(count):
                container = await stack.enter_async_context(started(build_container(path)))
                settings = container.settings()
                app = create_app(container.chains(), container.engines(), None,
                                 settings.server, log_settings=settings.log, keys=ApiKeys([]))
                runner, url = await start_app(app)
                stack.push_async_callback(runner.cleanup)
                out.append(Replica(url, container))
            return out

        yield start


def shared(redis: RedisServer, test: str) -> str:
    return f"state: {{backend: redis, url: \"{redis.url}\", prefix: \"{test}:\"}}\n"


async def circuit(url: str, engine: str) -> str:
    status, body = await get_json(f"{url}/ready")
    return str(body["engines"][engine]["state"])


async def until(url: str, engine: str, state: str, timeout_s: float = 5.0) -> None:
    """Wait until the /ready of the replica at ``url`` shows ``engine`` in ``state``."""
    deadline = time.monotonic() + timeout_s
    while (seen := await circuit(url, engine)) != state:
        assert time.monotonic() < deadline, f"{engine}: {seen}, not {state}"
        await asyncio.sleep(0.05)


async def test_a_circuit_opened_through_one_replica_is_skipped_by_the_other(
        tmp_path, fault_server: FaultServer, redis_server, replicas) -> None:
    bad, good = Scenario(mode="status", status=503, faults=-1), Scenario()
    path = write_settings(
        tmp_path, engine_yaml("bad", fault_server.url(bad)) +
        engine_yaml("good", fault_server.url(good)),
        "  main: {engines: [bad, good], circuit_breaker: {failure_threshold: 3, cooldown_s: 2}}\n",
        shared(redis_server, "open-circuit"))
    a, b = await replicas(path)
    for i in range(3):  # three straight failures, all through A
        status, body, _ = await chat(a.url, "main", f"a{i}")
        assert status == 200 and body["inferline"]["served_by"] == "good"
    assert len(bad.requests) == 3
    await until(b.url, "bad", "circuit_open")  # B sees the circuit A opened
    for i in range(5):
        status, body, _ = await chat(b.url, "main", f"b{i}")
        assert body["inferline"]["served_by"] == "good"
        assert body["inferline"]["attempts"][0]["message"] == "circuit open"
    assert len(bad.requests) == 3  # B never called the engine

    await asyncio.sleep(2.1)  # the cooldown: half-open, for one trial across both replicas
    burst = [chat(r.url, "main", f"t{i}") for i in range(8) for r in (a, b)]
    assert all(body["inferline"]["served_by"] == "good"
               for _, body, _ in await asyncio.gather(*burst))
    assert len(bad.requests) == 4  # one trial, not one per replica (it failed: open again)

    bad.mode = "ok"  # the engine recovers; the next trial, through A, closes it for B too
    await asyncio.sleep(2.1)
    assert (await chat(a.url, "main", "trial"))[1]["inferline"]["served_by"] == "bad"
    await until(b.url, "bad", "available")
    assert (await chat(b.url, "main", "after"))[1]["inferline"]["served_by"] == "bad"


async def test_requests_per_minute_holds_across_replicas(
        tmp_path, fault_server: FaultServer, redis_server, replicas) -> None:
    rpm, per_replica = 1200, 20  # one request every 50 ms, whichever replica sends it
    paced = Scenario()
    path = write_settings(tmp_path, engine_yaml("paced", fault_server.url(paced),
                                                requests_per_minute=rpm),
                          "  main: [paced]\n", shared(redis_server, "rpm"))
    a, b = await replicas(path)
    replies = await asyncio.gather(*[chat(r.url, "main", f"{i}") for i in range(per_replica)
                                     for r in (a, b)])
    assert [status for status, _, _ in replies] == [200] * 2 * per_replica
    times = sorted(r["t"] for r in paced.requests)
    rate = (len(times) - 1) / (times[-1] - times[0]) * 60
    assert rpm * 0.8 <= rate <= rpm * 1.05, f"{rate:.0f} requests/minute (limit {rpm})"


async def test_redis_killed_mid_test_replicas_serve_on_local_state(
        tmp_path, fault_server: FaultServer, redis_factory, replicas) -> None:
    redis = redis_factory()
    echo = Scenario()
    path = write_settings(tmp_path, engine_yaml("echo", fault_server.url(echo),
                                                requests_per_minute=6000),
                          "  main: [echo]\n", shared(redis, "killed"))
    a, b = await replicas(path)
    for r in (a, b):
        assert (await chat(r.url, "main", "before"))[0] == 200
        assert (await get_json(f"{r.url}/ready"))[1]["state"] == {"backend": "redis",
                                                                 "status": "ok"}
    redis.kill()
    with capture_logs() as logs:
        replies = await asyncio.gather(*[chat(r.url, "main", f"q{i}") for i in range(10)
                                         for r in (a, b)])
        ready = [await get_json(f"{r.url}/ready") for r in (a, b)]
    assert [(s, body["choices"][0]["message"]["content"]) for s, body, _ in replies] == [
        (200, f"echo: q{i}") for i in range(10) for _ in (a, b)]
    for status, body in ready:  # degraded, not down
        assert status == 200 and body["ready"] is True
        assert body["state"]["status"] == "degraded" and "unreachable" in body["state"]["reason"]
    warned = [e for e in logs if e["event"] == "shared_state_unreachable"]
    assert len(warned) == 2  # once per replica, not once per request


async def test_tokens_per_minute_is_one_bucket_for_every_replica(redis_server) -> None:
    from inferline.server.state import RedisState

    tpm = 60_000  # a bucket of 60,000 tokens that refills at 1,000 a second
    states = [RedisState(redis_server.url, prefix="tpm:") for _ in "ab"]  # two replicas
    a, b = (state.limiter("e", None, tpm) for state in states)
    await a.acquire(tpm)  # replica A takes the whole minute's worth
    start = time.monotonic()
    await b.acquire(500)  # so replica B waits for the refill, about half a second
    assert 0.4 <= time.monotonic() - start <= 1.0
    a.settle(tpm, 0)  # A's call used nothing after all: the tokens go back to everyone
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await b.acquire(20_000)
    assert time.monotonic() - start < 0.2
    for state in states:
        await state.aclose()


async def test_tokens_per_minute_through_the_gateway_is_one_budget_for_both_replicas(
        tmp_path, fault_server: FaultServer, redis_server, replicas) -> None:
    tpm = 60_000  # 1,000 tokens a second, and a bucket of a minute's worth
    metered = Scenario()
    path = write_settings(tmp_path, engine_yaml("metered", fault_server.url(metered),
                                                tokens_per_minute=tpm),
                          "  main: [metered]\n", shared(redis_server, "tpm-gateway"))
    a, b = await replicas(path)
    status, _, _ = await chat(a.url, "main", " ".join(["tok"] * tpm))  # A spends the minute
    assert status == 200
    # 104 tokens each (100 prompt words, 4 answer words; the engine estimates 103 up front):
    # B has not spent any, yet it waits for the bucket A emptied, as A does
    prompt = " ".join(["tok"] * 100)
    began = time.monotonic()
    replies = await asyncio.gather(*[chat(r.url, "main", prompt) for _ in range(10)
                                     for r in (a, b)])
    assert [status for status, _, _ in replies] == [200] * 20
    assert time.monotonic() - began >= 20 * 104 / 1000 * 0.8
    times = sorted(r["t"] for r in metered.requests[1:])
    rate = (len(times) - 1) * 104 / (times[-1] - times[0]) * 60
    assert tpm * 0.8 <= rate <= tpm * 1.05, f"{rate:.0f} tokens/minute (limit {tpm})"


# -- two `inferline serve` processes over one Redis ---------------------------------------

async def serve(settings: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``inferline serve`` on 127.0.0.1 and a free port, in its own session: it and its URL."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([INFERLINE, "serve", "--settings", str(settings), "--host",
                                 "127.0.0.1", "--port", "0"], stderr=log, start_new_session=True)
    try:
        return proc, await asyncio.to_thread(_wait_for_url, proc, log_path)
    except BaseException:
        stop(proc)
        raise


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def test_two_serve_processes_share_circuits_and_limits_and_outlive_redis(
        tmp_path, fault_server: FaultServer, redis_factory) -> None:
    redis = redis_factory()
    bad, good, paced = Scenario(mode="status", status=503, faults=-1), Scenario(), Scenario()
    rpm = 1200  # one request every 50 ms, whichever process sends it
    path = write_settings(
        tmp_path, engine_yaml("bad", fault_server.url(bad)) +
        engine_yaml("good", fault_server.url(good)) +
        engine_yaml("paced", fault_server.url(paced), requests_per_minute=rpm),
        "  main: {engines: [bad, good], circuit_breaker: {failure_threshold: 3, cooldown_s: 60}}\n"
        "  steady: [paced]\n", shared(redis, "processes"))
    started = await asyncio.gather(serve(path, tmp_path / "a.log"),
                                   serve(path, tmp_path / "b.log"), return_exceptions=True)
    try:
        for result in started:
            if isinstance(result, BaseException):
                raise result
        (proc_a, a), (proc_b, b) = started  # type: ignore[misc]
        assert proc_a.pid != proc_b.pid and a != b

        for i in range(3):  # three straight failures of "bad", all through A
            status, body, worker = await chat(a, "main", f"a{i}")
            assert (status, body["inferline"]["served_by"], worker) == (200, "good",
                                                                        str(proc_a.pid))
        await until(b, "bad", "circuit_open")  # B's /ready shows the circuit A opened
        for i in range(5):
            status, body, worker = await chat(b, "main", f"b{i}")
            assert (status, body["inferline"]["served_by"], worker) == (200, "good",
                                                                        str(proc_b.pid))
            assert body["inferline"]["attempts"][0]["message"] == "circuit open"
        assert len(bad.requests) == 3  # B never called the engine

        replies = await asyncio.gather(*[chat(url, "steady", f"{i}") for i in range(20)
                                         for url in (a, b)])
        assert [status for status, _, _ in replies] == [200] * 40
        times = sorted(r["t"] for r in paced.requests)
        rate = (len(times) - 1) / (times[-1] - times[0]) * 60
        assert rpm * 0.8 <= rate <= rpm * 1.05, f"{rate:.0f} requests/minute (limit {rpm})"

        redis.kill()
        replies = await asyncio.gather(*[chat(url, "steady", f"q{i}") for i in range(5)
                                         for url in (a, b)])
        assert [(s, body["choices"][0]["message"]["content"]) for s, body, _ in replies] == [
            (200, f"echo: q{i}") for i in range(5) for _ in (a, b)]
        for url in (a, b):  # degraded, not down
            status, body = await get_json(f"{url}/ready")
            assert status == 200 and body["ready"] is True
            assert body["state"]["status"] == "degraded", body["state"]
    finally:
        for result in started:
            if not isinstance(result, BaseException):
                stop(result[0])
    for name in ("a.log", "b.log"):  # each logged the lost Redis once
        assert (tmp_path / name).read_text().count("shared_state_unreachable") == 1
