"""``inferline config show``: the resolved settings, secrets masked.

    inferline config show --settings deploy.yaml --env prod [--json]

Settings hold only the *names* of secret variables; values never appear.
"""

from __future__ import annotations

import argparse
import json

import yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show"])
    parser.add_argument("--settings", help="settings YAML")
    parser.add_argument("--env", help="settings profile (dev, prod, ...)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")


def run(args: argparse.Namespace) -> int:
    from inferline.settings import load_settings

    data = load_settings(args.settings, env=args.env).model_dump(mode="json")
    print(json.dumps(data, indent=2) if args.json else yaml.safe_dump(data, sort_keys=False))
    return 0
