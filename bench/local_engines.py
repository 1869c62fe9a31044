"""Local engines vs the raw libraries, on the packaged model, in one run.

16 prompts x 32 new tokens, greedy. For each backend our engine and the raw
library (built with the same settings) are warmed up, then timed in alternating
order for several rounds; medians are reported, with the ratio ours / raw.
vLLM is also timed on 128 prompts. Results go to bench/results/local_engines.json.

    python bench/local_engines.py            # all three (about 3-4 minutes on 2 cores)
    python bench/local_engines.py llamacpp   # or any of: native, llamacpp, vllm
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferline.core.configs import GenerationParams, InferenceConfig, ModelParams
from inferline.core.types import Conversation
from inferline.engines.models import gguf_path, hf_path

TOPICS = ["cats", "the sun", "elephants", "the ocean", "rivers", "Paris", "music", "winter",
          "bicycles", "the moon", "volcanoes", "trees", "rain", "books", "horses", "mountains"]
NEW_TOKENS = 32
ROUNDS = 5
RESULTS = Path(__file__).parent / "results" / "local_engines.json"
Run = Callable[[], list[str]]  # one timed call: the answers, in order


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Write one sentence about {TOPICS[i % 16]}"
              + (f", part {i // 16 + 1}." if i >= 16 else ".")}] for i in range(n)]


def conversations(n: int) -> list[Conversation]:
    return [Conversation.from_prompt(m[0]["content"]) for m in prompts(n)]


def ours(engine: Any, n: int) -> Run:
    convs, cfg = conversations(n), InferenceConfig(
        generation=GenerationParams(max_new_tokens=NEW_TOKENS, temperature=0.0))
    return lambda: [c.messages[-1].text for c in engine.infer(convs, cfg)]


def compare(name: str, mine: Run, raw: Run, count_tokens: Callable[[list[str]], int],
            n: int) -> dict[str, Any]:
    """Warm both up, then time them alternately; medians and ratios."""
    answers = mine()  # warm-up; the same settings must give the same answers
    same = answers == raw()
    times: dict[str, list[float]] = {"ours": [], "raw": []}
    for i in range(ROUNDS):
        for side, run in (("ours", mine), ("raw", raw))[:: 1 if i % 2 else -1]:
            start = time.perf_counter()
            run()
            times[side].append(time.perf_counter() - start)
    tokens = count_tokens(answers)
    row = {"backend": name, "conversations": n, "new_tokens": NEW_TOKENS, "same_output": same,
           "completion_tokens": tokens}
    for side in ("ours", "raw"):
        median = statistics.median(times[side])
        row[side] = {"median_s": round(median, 4), "conv_per_s": round(n / median, 2),
                     "tok_per_s": round(tokens / median, 1)}
    row["ratio"] = round(row["ours"]["conv_per_s"] / row["raw"]["conv_per_s"], 3)
    print(f"{name:<10} n={n:<4} ours {row['ours']['conv_per_s']:>7} conv/s "
          f"{row['ours']['tok_per_s']:>7} tok/s | raw {row['raw']['conv_per_s']:>7} conv/s "
          f"{row['raw']['tok_per_s']:>7} tok/s | ratio {row['ratio']:.3f} same={same}", flush=True)
    return row


def bench_llamacpp() -> list[dict[str, Any]]:
    from llama_cpp import Llama

    from inferline.engines.llamacpp import LlamaCppInferenceEngine

    threads = len(os.sched_getaffinity(0))
    settings = {"n_ctx": 2048, "n_batch": 512, "n_threads": threads, "n_threads_batch": threads,
                "flash_attn": True}  # our default, given to the raw library too
    path = str(gguf_path())
    engine = LlamaCppInferenceEngine(ModelParams(model_name=path, model_kwargs=settings))
    engine.load()
    llm = Llama(model_path=path, verbose=False, **settings)
    msgs = prompts(16)

    def raw() -> list[str]:
        outs = [llm.create_chat_completion(m, max_tokens=NEW_TOKENS, temperature=0.0)
                for m in msgs]
        return [o["choices"][0]["message"]["content"] for o in outs]

    count = lambda texts: sum(len(llm.tokenize(t.encode(), add_bos=False)) for t in texts)  # noqa: E731
    try:
        return [compare("llamacpp", ours(engine, 16), raw, count, 16)]
    finally:
        engine.close()
        llm.close()


def bench_native() -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inferline.engines.native import NativeTextInferenceEngine

    path = str(hf_path())
    engine = NativeTextInferenceEngine(ModelParams(model_name=path, model_kwargs={
        "torch_dtype": "bfloat16"}))
    engine.load()
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    msgs = prompts(16)

    def raw() -> list[str]:
        texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
                 for m in msgs]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    count = lambda texts: sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)  # noqa: E731
    try:
        return [compare("native", ours(engine, 16), raw, count, 16)]
    finally:
        engine.close()


def bench_vllm() -> list[dict[str, Any]]:
    from vllm import LLM, SamplingParams

    from inferline.engines.vllm import VLLMInferenceEngine

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    path = str(hf_path())
    settings = {"max_model_len": 2048, "enforce_eager": True}
    engine = VLLMInferenceEngine(ModelParams(model_name=path, model_kwargs=settings))
    engine.load()
    llm = LLM(model=path, disable_log_stats=True, **settings)
    sampling = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    tok = llm.get_tokenizer()
    count = lambda texts: sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)  # noqa: E731

    def raw(n: int) -> Run:
        msgs = prompts(n)
        return lambda: [o.outputs[0].text for o in llm.chat(msgs, sampling, use_tqdm=False)]

    try:
        return [compare("vllm", ours(engine, n), raw(n), count, n) for n in (16, 128)]
    finally:
        engine.close()
        llm.llm_engine.engine_core.shutdown()


def main(names: list[str]) -> int:
    benches = {"llamacpp": bench_llamacpp, "native": bench_native, "vllm": bench_vllm}
    rows = [row for name in names or list(benches) for row in benches[name]()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"model": "smollm2-135m", "rounds": ROUNDS,
                                   "cpus": len(os.sched_getaffinity(0)), "results": rows},
                                  indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0 if all(r["ratio"] >= 0.95 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
