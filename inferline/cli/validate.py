"""``inferline validate``: check a pipeline and the settings it needs, running no engine.

    inferline validate pipelines/examples/capital-quiz.yaml --settings deploy.yaml

Prints what each chain would do here (which engines are unavailable, and why).
Any error is one line, ``file:line: key: message (did you mean ...?)``, exit 2.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML file, or a pipeline's name")
    parser.add_argument("--settings", metavar="FILE", help="settings YAML")
    parser.add_argument("--env", help="settings profile (dev, prod, ...)")


def run(args: argparse.Namespace) -> int:
    from inferline.containers import build_container

    pipeline = build_container(args.settings, env=args.env).pipelines().load(args.pipeline)
    steps = ", ".join(step.kind for step in pipeline.spec.steps)
    print(f"ok: pipeline {pipeline.name!r}: {steps} -> {pipeline.spec.output!r}")
    for chain in pipeline.chains:
        states = [f"{name} ({reason or 'ready'})" for name, reason in chain.plan().items()]
        print(f"  chain {chain.name}: {' -> '.join(states)}", file=sys.stderr)
    return 0
