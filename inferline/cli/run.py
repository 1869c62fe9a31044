"""``inferline run``: a pipeline over a JSONL file, resumable, with a summary.

    inferline run capital-quiz --input rows.jsonl --output out.jsonl [--concurrency 32]

Each output line is the input row plus the generated fields, ``_meta`` (served_by,
attempts, usage) and ``_row``. Killed and rerun, it writes each row exactly once.
Failed rows go to stderr and ``<output>.errors.jsonl``; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML file, or a pipeline's name")
    parser.add_argument("--input", required=True, metavar="FILE", help="JSONL rows in")
    parser.add_argument("--output", metavar="FILE", help="JSONL rows out (default: stdout)")
    parser.add_argument("--errors", metavar="FILE",
                        help="failed rows (default: <output>.errors.jsonl)")
    parser.add_argument("--concurrency", type=int, default=64, metavar="N",
                        help="rows in flight at once (default 64)")
    parser.add_argument("--restart", action="store_true",
                        help="start over: discard rows an earlier run wrote to --output")
    parser.add_argument("--settings", metavar="FILE", help="settings YAML")
    parser.add_argument("--env", help="settings profile (dev, prod, ...)")


def run(args: argparse.Namespace) -> int:
    from inferline.cli.config import raise_unknown
    from inferline.containers import running
    from inferline.errors import ConfigurationError
    from inferline.pipelines.runner import Summary, arun_file

    if args.extra:
        raise_unknown(args.extra)
    if args.concurrency < 1:
        raise ConfigurationError("--concurrency must be at least 1")

    async def main() -> Summary:
        async with running(args.settings, env=args.env) as container:
            pipeline = container.pipelines().load(args.pipeline)
            return await arun_file(pipeline, args.input, args.output,
                                   concurrency=args.concurrency, restart=args.restart,
                                   errors_path=args.errors)

    summary = asyncio.run(main())
    for line in summary.lines():
        print(f"inferline: {line}", file=sys.stderr)
    return 1 if summary.failed else 0
