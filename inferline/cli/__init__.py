"""The ``inferline`` command. Each subcommand lives in its own module, imported only when run.

A subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``.
Bad input exits 2 with one line on stderr; an engine failure exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from inferline import __version__
from inferline.errors import ConfigurationError, InferlineError, TemplateError

#: name (also its module under inferline.cli) -> one-line help
COMMANDS: dict[str, str] = {
    "infer": "run an engine on prompts, a JSONL file, or interactively",
    "run": "run a pipeline over a JSONL file (resumable)",
    "validate": "check a pipeline and the settings it needs, without running it",
    "engines": "list engine types and whether each can run here",
    "models": "list packaged models and where they live; unpack them",
    "config": "show the resolved settings (secrets masked)",
    "serve": "serve an OpenAI-compatible gateway over chains and pipelines",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line, exit 2
        self.exit(2, f"inferline: error: {message}\n")


def _parser(command: str | None) -> argparse.ArgumentParser:
    parser = _Parser(prog="inferline",
                     description="One interface over local and cloud LLM engines.")
    parser.add_argument("--version", action="version", version=f"inferline {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(f"inferline.cli.{name}").add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = _parser(command)
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if extra and args.command != "infer":  # only infer takes dotted overrides
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    module = importlib.import_module(f"inferline.cli.{args.command}")
    try:
        code: int = module.run(args)
        return code
    except (ConfigurationError, TemplateError) as exc:
        print(f"inferline: error: {exc}", file=sys.stderr)
        return 2
    except InferlineError as exc:
        print(f"inferline: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
