"""Constrained decoding on llama.cpp: a JSON-extraction pipeline over 200 rows, with and
without ``constrain: true`` (the same schema, the same re-ask budget), and constrained with
the schema's strings unbounded, in one run.

Reports invalid rows (after re-asks, with why), re-asks, rows/s, and the grammar's own cost:
generated tokens per second with and without the grammar (the same prompts, the same number of
tokens per row; medians of 3 rounds).
Results go to bench/results/constrained.json.

    python bench/constrained.py   # about 10 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from inferline.core.configs import (
    GenerationParams,
    GuidedDecodingParams,
    InferenceConfig,
    ModelParams,
)
from inferline.core.portal import portal
from inferline.engines.catalog import EngineCatalog
from inferline.engines.llamacpp import LlamaCppInferenceEngine
from inferline.pipelines import ChainCatalog, Pipeline, PipelineBuilder
from inferline.settings.model import ChainSettings, EngineSettings

ROWS = 200
NAMES = ["Alice", "Bruno", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas"]
CITIES = ["Lyon", "Porto", "Oslo", "Turin", "Ghent", "Cork", "Brno", "Graz", "Bern", "Split"]
JOBS = ["nurse", "baker", "pilot", "teacher", "chemist"]
# Names and cities are short: bounded strings let the grammar close a string the model would
# not (SmolLM2 loops inside one on one row); UNBOUNDED is the same schema without the bounds.
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
          "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
                         "city": {"type": "string", "maxLength": 40}}}
UNBOUNDED = {**SCHEMA, "properties": {**SCHEMA["properties"], "name": {"type": "string"},
                                       "city": {"type": "string"}}}
SYSTEM = "Extract the person as JSON with the keys name, age and city. Answer with the JSON only."
RESULTS = Path(__file__).parent / "results" / "constrained.json"


def rows() -> list[dict[str, Any]]:
    return [{"text": f"{NAMES[i % 10]} is {21 + i % 37} years old and works as a "
                     f"{JOBS[i % 5]} in {CITIES[(i // 10) % 10]}."} for i in range(ROWS)]


def pipeline(engine: LlamaCppInferenceEngine, constrain: bool,
             schema: dict[str, Any] = SCHEMA) -> Pipeline:
    spec = (PipelineBuilder("extract", fields=["text"]).template("{{ text }}", system=SYSTEM)
            .generate(chain="main", generation={"max_new_tokens": 48})
            .postprocess({"json_schema": {"schema": schema, "reask": 2, "constrain": constrain}})
            .build(output="person"))
    chains = ChainCatalog({"main": ChainSettings(engines=["llama"])},
                          EngineCatalog({"llama": EngineSettings(type="LLAMACPP")},
                                        overrides={"llama": engine}))
    return Pipeline(spec, chains)


def run_pipeline(engine: LlamaCppInferenceEngine, constrain: bool,
                 schema: dict[str, Any] = SCHEMA) -> dict[str, Any]:
    data = rows()
    start = time.perf_counter()
    out = pipeline(engine, constrain, schema).run_batch(data)
    elapsed = time.perf_counter() - start
    calls = sum(len(o.calls) for o in out)
    correct = sum(o.output is not None and o.output["person"].get("age") == 21 + i % 37
                  and o.output["person"].get("name") == NAMES[i % 10]
                  for i, o in enumerate(out))
    return {"constrain": constrain, "strings_bounded": schema is SCHEMA,
            "invalid_rows": sum(o.error is not None for o in out),
            "invalid_why": sorted({str(o.error)[:200] for o in out if o.error is not None})[:5],
            "reasks": calls - ROWS, "rows_per_s": round(ROWS / elapsed, 2),
            "seconds": round(elapsed, 1), "name_and_age_right": correct}


def first_pass_seconds(engine: LlamaCppInferenceEngine) -> dict[str, float]:
    """The grammar's cost alone: 16 prompts, each generating as many tokens free as it does
    under the grammar (a constrained answer is short, so comparing whole answers would count
    the prompt's fixed cost against the grammar); one call per row. Each pass runs all 16
    rows in turn, so both start each row from another row's prompt: llama.cpp reuses a
    cached prompt prefix, and running a row twice in a row would hand the second run its
    whole prompt for free."""
    from inferline.core.types import Conversation

    convs = [Conversation.from_prompt(row["text"], system=SYSTEM) for row in rows()[:16]]
    caps: list[int] = []
    speed = {}
    for kind in ("grammar", "free"):
        took, tokens = 0.0, 0
        for i, conv in enumerate(convs):
            gen = GenerationParams(
                max_new_tokens=caps[i] if kind == "free" else 48,
                guided_decoding=GuidedDecodingParams(json=SCHEMA) if kind == "grammar" else None)
            start = time.perf_counter()
            [done] = portal.run(engine.agenerate([conv], InferenceConfig(generation=gen)))
            took += time.perf_counter() - start
            if kind == "grammar":
                caps.append(done.usage.completion_tokens)  # type: ignore[union-attr]
            tokens += done.usage.completion_tokens  # type: ignore[union-attr]
        speed[kind] = tokens / took
    return speed


def main() -> int:
    engine = LlamaCppInferenceEngine(ModelParams(model_name="smollm2-135m"), name="llama")
    engine.load()
    speed = [first_pass_seconds(engine) for _ in range(3)]
    med = {k: statistics.median(s[k] for s in speed) for k in ("free", "grammar")}
    results = [run_pipeline(engine, False), run_pipeline(engine, True),
               run_pipeline(engine, True, UNBOUNDED)]
    free, tight, _ = results
    summary = {
        "cpus": len(os.sched_getaffinity(0)), "rows": ROWS, "pipelines": results,
        "tokens_per_s": {"free": round(med["free"], 1), "grammar": round(med["grammar"], 1)},
        "grammar_cost": round(1 - med["grammar"] / med["free"], 3),
        "reasks_saved": round(1 - tight["reasks"] / free["reasks"], 3) if free["reasks"] else None,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
