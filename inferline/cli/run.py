"""``inferline run``: a pipeline over a JSONL file, resumable, with a summary.

    inferline run capital-quiz --input rows.jsonl --output out.jsonl [--concurrency 32]
    inferline run capital-quiz --input rows.jsonl --output out.jsonl --backend ray [--workers 4]

    inferline run capital-quiz --input rows.jsonl --output out.jsonl --max-cost 2.50

Each output line is the input row plus the generated fields, ``_meta`` (served_by,
attempts, usage, cost) and ``_row``. Killed and rerun, it writes each row exactly once.
Failed rows go to stderr and ``<output>.errors.jsonl``; the exit code is then 1. With
``--max-cost`` (USD) it starts no wave once this run has spent that much, says how far it
got and exits 3; a rerun continues from there, with a cap on its own spend.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferline.pipelines.runner import Summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML file, or a pipeline's name")
    parser.add_argument("--input", required=True, metavar="FILE", help="JSONL rows in")
    parser.add_argument("--output", metavar="FILE", help="JSONL rows out (default: stdout)")
    parser.add_argument("--errors", metavar="FILE",
                        help="failed rows (default: <output>.errors.jsonl)")
    parser.add_argument("--concurrency", type=int, default=64, metavar="N",
                        help="rows in flight at once (default 64)")
    parser.add_argument("--max-cost", type=float, metavar="USD",
                        help="stop once this run has spent this much (checked after each "
                             "wave; exit code 3); a rerun continues")
    parser.add_argument("--restart", action="store_true",
                        help="start over: discard rows an earlier run wrote to --output")
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="run here (default), or on a Ray cluster (inferline[ray])")
    parser.add_argument("--address", metavar="ADDR",
                        help="Ray cluster: auto, ray://host:10001 (default: a local one)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="Ray actors (default: one per GPU for a GPU chain, one per machine "
                             "for a local engine on CPUs, else one per CPU)")
    parser.add_argument("--settings", metavar="FILE", help="settings YAML")
    parser.add_argument("--env", help="settings profile (dev, prod, ...)")


def run(args: argparse.Namespace) -> int:
    from inferline.containers import running
    from inferline.errors import ConfigurationError
    from inferline.pipelines.runner import arun_file

    if args.concurrency < 1:
        raise ConfigurationError("--concurrency must be at least 1")
    if args.max_cost is not None and not args.max_cost >= 0:  # also refuses nan
        raise ConfigurationError("--max-cost must be a number of USD, 0 or more")
    if args.backend == "ray":
        if args.max_cost is not None:
            raise ConfigurationError("--max-cost works with --backend local only")
        if args.workers is not None and args.workers < 1:
            raise ConfigurationError("--workers must be at least 1")
        from inferline.integrations.ray import run_file

        return _report(run_file(args.pipeline, args.input, args.output, settings=args.settings,
                                env=args.env, address=args.address, workers=args.workers,
                                batch_size=args.concurrency, restart=args.restart,
                                errors_path=args.errors))
    if args.address is not None or args.workers is not None:
        raise ConfigurationError("--address and --workers need --backend ray")

    async def main() -> Summary:
        async with running(args.settings, env=args.env) as container:
            pipeline = container.pipelines().load(args.pipeline)
            return await arun_file(pipeline, args.input, args.output,
                                   concurrency=args.concurrency, restart=args.restart,
                                   errors_path=args.errors, max_cost=args.max_cost)

    return _report(asyncio.run(main()))


def _report(summary: Summary) -> int:
    for line in summary.lines():
        print(f"inferline: {line}", file=sys.stderr)
    if summary.stopped:
        return 3  # --max-cost stopped it with rows left
    return 1 if summary.failed else 0
