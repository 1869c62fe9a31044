"""RemoteInferenceEngine of other git revisions against the working tree's, in one run.

    .venv/bin/python bench/remote_ab.py 433bb2a            # that commit against the working tree
    .venv/bin/python bench/remote_ab.py 433bb2a HEAD~1 --runs 9

Each revision is unpacked as installed (``gateway_ab.unpack``) and run in its own process,
with that copy first on ``PYTHONPATH``; one stub server (``remote_engine``'s) serves all.
A run of one version: a warm-up, then two rounds each of the bare aiohttp loop and
``engine.infer`` over 3,000 requests at 64 in flight, in one process, so its ratio compares
like with like. Runs alternate the versions. Per version: the median ratio (and its range)
and the engine's client CPU per request. Writes ``bench/results/remote_ab.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import gateway_ab
import remote_engine as remote

RESULTS = Path(__file__).parent / "results" / "remote_ab.json"
WORKING_TREE = "working tree"


def one_run(url: str) -> dict[str, Any]:
    """In the child: this version's ratio to the bare loop, and CPU per request of each."""
    import inferline.engines.openai_compat as module
    from inferline.core.types import Conversation

    texts = remote.prompts(remote.N_REQUESTS)
    convs = [Conversation.from_prompt(t) for t in texts]
    engine = remote.engine_for(url)
    clients = {"bare": lambda: asyncio.run(remote.bare_loop(url, texts)),
               "ours": lambda: sum(c.messages[-1].content == "Paris." for c in engine.infer(convs))}
    for client in clients.values():
        assert client() == remote.N_REQUESTS
    rps: dict[str, list[float]] = {name: [] for name in clients}
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(2):
        for name, client in clients.items():
            wall, used, ok = remote.timed(client)
            assert ok == remote.N_REQUESTS, name
            rps[name].append(remote.N_REQUESTS / wall)
            cpu[name].append(used / remote.N_REQUESTS * 1e6)
    engine.close()
    return {"file": module.__file__,
            "ratio": statistics.median(rps["ours"]) / statistics.median(rps["bare"]),
            "cpu_us": statistics.median(cpu["ours"]), "bare_cpu_us": statistics.median(cpu["bare"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+", help="git revisions to compare with the working tree")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    versions: dict[str, Path | None] = {rev: gateway_ab.unpack(rev) for rev in args.revs}
    versions[WORKING_TREE] = None
    proc, url = remote.start_server()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    try:
        for _ in range(args.runs):
            for name, pkg in versions.items():
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                if pkg is not None:
                    env["PYTHONPATH"] = str(pkg)
                out = json.loads(subprocess.run(
                    [sys.executable, __file__, "--child", url], env=env, cwd=pkg or Path.cwd(),
                    check=True, capture_output=True, text=True).stdout)
                assert pkg is None or out["file"].startswith(str(pkg)), f"{name}: {out['file']}"
                runs[name].append(out)
    finally:
        proc.kill()
    result = {name: {"ratio": round(statistics.median(r["ratio"] for r in rs), 3),
                     "ratio_range": [round(min(r["ratio"] for r in rs), 3),
                                     round(max(r["ratio"] for r in rs), 3)],
                     "cpu_us_per_request": round(statistics.median(r["cpu_us"] for r in rs)),
                     "bare_cpu_us_per_request": round(statistics.median(r["bare_cpu_us"]
                                                                        for r in rs))}
              for name, rs in runs.items()}
    RESULTS.write_text(json.dumps({"runs": args.runs, "requests": remote.N_REQUESTS,
                                   "versions": result}, indent=2) + "\n")
    for name, r in result.items():
        print(f"{name:>14}: ratio {r['ratio']} {r['ratio_range']}, {r['cpu_us_per_request']} µs "
              f"CPU a request (the bare loop: {r['bare_cpu_us_per_request']})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(one_run(sys.argv[2])))
    else:
        main()
