"""The gateway's CPU per request and latency, one version of the code against another, in one run.

    .venv/bin/python bench/gateway_ab.py HEAD~1              # that commit against the working tree
    .venv/bin/python bench/gateway_ab.py v1 v2 --rounds 6    # two commits (and the working tree)

Each git revision is unpacked into ``build/ab/<rev>`` in the installed layout (the
``package-dir`` mapping of ``pyproject.toml``) and served by ``inferline serve`` with that copy
first on ``PYTHONPATH``; the working tree is served as installed. One stub upstream
(``gateway_load``'s), one settings file. Rounds alternate the gateways, so all see the same
machine. Per gateway: the CPU its process used per request under 64 clients (user + system
time from ``/proc``, over ``--requests`` requests), requests/s, and the one-client latency
(median and p99). The bench's figures move between runs; differences within one run are the
measure. Writes ``bench/results/gateway_ab.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
import gateway_load as gl

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "gateway_ab.json"
WORKING_TREE = "working tree"


def unpack(rev: str) -> Path:
    """``rev``'s packages, laid out as installed, under ``build/ab``; the folder to import from."""
    dest = ROOT / "build" / "ab" / rev.replace("/", "_")
    shutil.rmtree(dest, ignore_errors=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True,
                             capture_output=True).stdout
    src = dest / "src"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    mapping = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    for package, folder in sorted(mapping.items()):  # "inferline" before "inferline.x"
        shutil.copytree(src / folder, dest / "pkg" / package.replace(".", "/"))
    return dest / "pkg"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(name: str, pkg: Path | None, stub_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """``inferline serve`` importing ``pkg`` first (None: the installed working tree)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pkg is not None:
        env["PYTHONPATH"] = str(pkg)
        found = subprocess.run([sys.executable, "-c", "import inferline.server.app as m; "
                                "print(m.__file__)"], env=env, cwd=pkg, check=True,
                               capture_output=True, text=True).stdout
        assert found.startswith(str(pkg)), f"{name} would import {found}"
    settings = gl.gateway_settings(stub_url, Path(tempfile.mkdtemp()))
    return gl.start_gateway(settings, tag=name.replace(" ", "_"), env=env)


async def measure(gateways: dict[str, tuple[int, str]], rounds: int,
                  requests: int) -> dict[str, Any]:
    out: dict[str, Any] = {name: {"cpu_us": [], "rps": [], "latencies": []} for name in gateways}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for _, url in gateways.values():
            await gl.load(session, url, 300)  # warm up
        for _ in range(rounds):
            for name, (pid, url) in gateways.items():
                before = cpu_seconds(pid)
                load = await gl.load(session, url, requests)
                out[name]["cpu_us"].append((cpu_seconds(pid) - before) / requests * 1e6)
                out[name]["rps"].append(load["rps"])
                out[name]["latencies"] += (await gl.one_client(session, url, 100))["latencies"]
    return out


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    return {name: {"cpu_us_per_request": round(statistics.median(r["cpu_us"])),
                   "cpu_us_rounds": [round(x) for x in r["cpu_us"]],
                   "rps": round(statistics.median(r["rps"])),
                   "one_client_p50_ms": round(gl._q(r["latencies"], 50) * 1000, 3),
                   "one_client_p99_ms": round(gl._q(r["latencies"], 99) * 1000, 3)}
            for name, r in raw.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+", help="git revisions to compare with the working tree")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    stub, stub_url = gl.start_process(gl._stub)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    gateways: dict[str, tuple[int, str]] = {}
    try:
        revs = [subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip() for rev in args.revs]
        for name, pkg in [*((rev, unpack(rev)) for rev in revs), (WORKING_TREE, None)]:
            procs[name], url = start(name, pkg, stub_url)
            gateways[name] = (procs[name].pid, url + "/v1/chat/completions")
        results = summary(asyncio.run(measure(gateways, args.rounds, args.requests)))
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        stub.terminate()
    report = {"setup": {"rounds": args.rounds, "requests": args.requests, "clients":
                        gl.CONCURRENCY, "loadavg": list(os.getloadavg())},
              "gateways": results}
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name:>14}: {r['cpu_us_per_request']:4d} µs CPU a request {r['cpu_us_rounds']}, "
              f"{r['rps']:5d} req/s, one client {r['one_client_p50_ms']:.3f} / "
              f"{r['one_client_p99_ms']:.3f} ms (p50 / p99)")


if __name__ == "__main__":
    main()
