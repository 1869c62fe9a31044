"""``inferline infer``: the seed's CLI.

    inferline infer --engine LLAMACPP --model.model_name smollm2-135m --generation.max_new_tokens 64
    inferline infer -c infer.yaml --input_path in.jsonl --output_path out.jsonl
    echo "What is 2+2?" | inferline infer --engine-name local_llamacpp

Any field of InferenceConfig can be set with a dotted flag. With stdin not a
terminal, each input line is one prompt and each output line one answer (newlines
inside an answer are written as ``\\n``); on a terminal, ``-i`` chats.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from inferline.core.configs import InferenceConfig
from inferline.core.types import Conversation, Message, Role
from inferline.errors import ConfigurationError
from inferline.settings.loader import Lines, deep_merge, read_yaml, validation_error

if TYPE_CHECKING:
    from inferline.containers import Container
    from inferline.engines.base import Generator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="InferenceConfig YAML (model, generation, ...)")
    parser.add_argument("--engine", help="engine type, e.g. LLAMACPP, VLLM, NATIVE, REMOTE")
    parser.add_argument("--engine-name", help="a named engine from settings instead of --engine")
    parser.add_argument("--chain", help="a named fallback chain from settings")
    parser.add_argument("--settings", help="settings YAML (for --engine-name / --chain)")
    parser.add_argument("--env", help="settings profile")
    parser.add_argument("--input_path", help="JSONL conversations in")
    parser.add_argument("--output_path", help="JSONL conversations out (resumable)")
    parser.add_argument("--system", help="system prompt for line and chat modes")
    parser.add_argument("-i", "--interactive", action="store_true", help="multi-turn chat")
    parser.epilog = "Any InferenceConfig field as a dotted flag: --model.model_name X, " \
                    "--generation.max_new_tokens 64, --remote_params.num_workers 8."


def dotted_overrides(extra: list[str]) -> dict[str, Any]:
    """``['--a.b', '1', '--c=x']`` -> ``{'a': {'b': 1}, 'c': 'x'}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    items = iter(extra)
    value: str | None
    for flag in items:
        if not flag.startswith("--"):
            raise ConfigurationError(f"unexpected argument {flag!r}")
        key, eq, value = flag[2:].partition("=")
        if not eq:
            value = next(items, None)
            if value is None:
                raise ConfigurationError(f"flag --{key} needs a value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def build_config(args: argparse.Namespace) -> InferenceConfig:
    lines: Lines = {}
    data = read_yaml(args.config, lines) if args.config else {}
    data = deep_merge(data, dotted_overrides(args.extra))
    for key in ("engine", "input_path", "output_path"):
        if getattr(args, key):
            data[key] = getattr(args, key)
    if isinstance(data.get("engine"), str):
        data["engine"] = data["engine"].upper()
    try:
        return InferenceConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, lines, InferenceConfig, file=args.config) from None


def build(args: argparse.Namespace, config: InferenceConfig, container: Container) -> Generator:
    """The chain or engine to run: named in settings, or built from the config."""
    if args.chain:
        return container.chains().get(args.chain)
    if args.engine_name:
        return container.engines().get(args.engine_name)
    if config.engine is None:
        raise ConfigurationError("say which engine: --engine TYPE or --engine-name NAME",
                                 key="engine")
    from inferline.engines import build_engine

    engine = build_engine(config.engine, config.model, generation_params=config.generation,
                          remote_params=config.remote_params)
    container.engines().add(engine.name, engine)  # closed with the container's engines
    return engine


def run(args: argparse.Namespace) -> int:
    asyncio.run(_run(args, build_config(args)))
    return 0


async def _run(args: argparse.Namespace, config: InferenceConfig) -> None:
    from inferline.containers import running
    from inferline.pipelines.runner import ainfer_file

    async with running(args.settings, env=args.env) as container:
        engine = build(args, config, container)
        if config.input_path:
            outputs = await ainfer_file(engine, None, config)
            print(f"{len(outputs)} conversations written to {config.output_path or 'stdout'}",
                  file=sys.stderr)
            if not config.output_path:
                for conv in outputs:
                    print(conv.to_json())
        elif args.interactive or sys.stdin.isatty():
            await _chat(engine, config, args.system)
        else:
            await _lines(engine, config, args.system)


async def _lines(engine: Generator, config: InferenceConfig, system: str | None) -> None:
    prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for start in range(0, len(prompts), 32):
        convs = [Conversation.from_prompt(p, system) for p in prompts[start:start + 32]]
        for out in await engine.ainfer(convs, config):
            print(out.messages[-1].text.replace("\\", "\\\\").replace("\n", "\\n"), flush=True)


async def _chat(engine: Generator, config: InferenceConfig, system: str | None) -> None:
    conv = Conversation(messages=[Message(role=Role.SYSTEM, content=system)] if system else [])
    print("inferline chat: empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            # Nothing else runs while the REPL waits; input() in a thread would hang on Ctrl-C.
            text = input("> ").strip()  # noqa: ASYNC250
        except EOFError:
            break
        if not text:
            break
        conv = conv.append(Message(role=Role.USER, content=text))
        [conv] = await engine.ainfer([conv], config)
        print(conv.messages[-1].text)
