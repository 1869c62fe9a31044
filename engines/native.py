"""transformers + torch, in-process: the most compatible local engine.

Conversations are batched with left padding (``GenerationParams.batch_size`` per
forward batch, 16 by default), decoded greedily when temperature is 0, and cut
at stop strings. ``load_in_4bit``/``load_in_8bit`` need bitsandbytes and a CUDA GPU.

    engine = NativeTextInferenceEngine(ModelParams(
        model_name="smollm2-135m", model_kwargs={"device_map": "auto", "torch_dtype": "bfloat16"}))
    engine.infer([Conversation.from_prompt("What is the capital of France?")])
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import structlog

from inferline.core.configs import GenerationParams, InferenceEngineType
from inferline.core.types import Conversation
from inferline.engines.base import Completion, StreamChunk, Usage
from inferline.engines.hardware import cuda_available
from inferline.engines.local import (
    Emit,
    LocalInferenceEngine,
    Options,
    StopStrings,
    chat_messages,
    check_model_fits,
    cut_at_stop,
    stream_from_thread,
    token_bias,
)
from inferline.engines.models import resolve_model
from inferline.errors import EngineUnavailableError, FatalEngineError

log = structlog.get_logger(__name__)

DEFAULT_BATCH_SIZE = 16
Dtype = Literal["auto", "float32", "float16", "bfloat16", "fp32", "fp16", "bf16", "float", "half"]
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
                  "bf16": "bfloat16"}


class NativeOptions(Options):
    """``model_kwargs`` for transformers. ``device_map``/``torch_dtype`` override the
    ``ModelParams`` fields of the same meaning (``device_map``, ``torch_dtype_str``)."""

    device_map: str | dict[str, Any] | None = None
    torch_dtype: Dtype | None = None
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_compute_dtype: Dtype | None = None
    attn_implementation: str | None = None
    revision: str | None = None


class NativeTextInferenceEngine(LocalInferenceEngine):
    """Runs a Hugging Face model with ``model.generate``; batches; streams."""

    engine_type = InferenceEngineType.NATIVE
    supported_params = frozenset({
        "max_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop_strings",
        "stop_token_ids", "seed", "logit_bias", "skip_special_tokens", "batch_size"})
    can_stream = True
    options_class = NativeOptions
    options: NativeOptions

    _model: Any = None
    _tokenizer: Any = None

    # -- lifecycle --------------------------------------------------------------

    @property
    def dtype(self) -> str:
        value = self.options.torch_dtype or self.model_params.torch_dtype_str or "auto"
        return _DTYPE_ALIASES.get(value, value)

    @property
    def quantized(self) -> str | None:
        opts = self.options
        return "4bit" if opts.load_in_4bit else "8bit" if opts.load_in_8bit else None

    def preflight(self) -> None:
        for package in ("torch", "transformers"):
            if importlib.util.find_spec(package) is None:
                raise EngineUnavailableError(f"{package} is not installed: "
                                             "pip install 'inferline[hf]'", engine=self.name)
        if self.quantized:
            self._check_bitsandbytes()
        device = "cuda" if self._device_map() not in (None, "cpu") else "cpu"
        precision = {"4bit": "q4", "8bit": "int8"}.get(self.quantized or "", self.dtype)
        check_model_fits(self.model_params.model_name, "hf", precision=precision, device=device,
                         engine=self.name)

    def _check_bitsandbytes(self) -> None:
        if not cuda_available():
            raise EngineUnavailableError(
                f"load_in_{self.quantized} needs a CUDA GPU (bitsandbytes) and none was found; "
                "drop it to run unquantized on the CPU", engine=self.name)
        if importlib.util.find_spec("bitsandbytes") is None:
            raise EngineUnavailableError(f"load_in_{self.quantized} needs bitsandbytes: "
                                         "pip install bitsandbytes", engine=self.name)

    def _device_map(self) -> str | dict[str, Any] | None:
        """The device map; "auto" means the GPU if there is one, else plain CPU (no hooks)."""
        value = self.options.device_map or self.model_params.device_map
        if value in ("auto", None):
            return "auto" if cuda_available() else None
        if isinstance(value, str) and value.startswith("cuda") and not cuda_available():
            raise EngineUnavailableError(f"device_map={value!r}: no GPU", engine=self.name)
        return value

    def _load(self) -> None:
        path = resolve_model(self.model_params.model_name, "hf", engine=self.name)
        tokenizer = self.model_params.tokenizer_name
        tokenizer_path = resolve_model(tokenizer, "hf", engine=self.name) if tokenizer else path
        try:
            self._tokenizer = self._load_tokenizer(tokenizer_path)
            self._model = self._load_model(path)
        except (OSError, MemoryError, RuntimeError) as exc:
            raise EngineUnavailableError(f"cannot load {path}: {type(exc).__name__}: {exc}",
                                         engine=self.name) from exc
        log.info("engine_loaded", engine=self.name, model=path, dtype=str(self._model.dtype),
                 device=str(self._model.device))

    def _load_tokenizer(self, path: str) -> Any:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, padding_side="left",
                                            trust_remote_code=self.model_params.trust_remote_code,
                                            **self.model_params.tokenizer_kwargs)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if self.model_params.chat_template:
            tok.chat_template = self.model_params.chat_template
        return tok

    def _load_model(self, path: str) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        kwargs = self.options.model_dump(include={"attn_implementation", "revision"},
                                         exclude_none=True)
        kwargs.update(trust_remote_code=self.model_params.trust_remote_code,
                      dtype=self.dtype if self.dtype == "auto" else getattr(torch, self.dtype))
        if (device_map := self._device_map()) is not None:
            kwargs["device_map"] = device_map
        if self.quantized:
            kwargs["quantization_config"] = self._bnb_config()
        return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()

    def _bnb_config(self) -> Any:
        import torch
        from transformers import BitsAndBytesConfig

        compute = self.options.bnb_4bit_compute_dtype
        return BitsAndBytesConfig(
            load_in_4bit=self.options.load_in_4bit, load_in_8bit=self.options.load_in_8bit,
            bnb_4bit_quant_type=self.options.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=getattr(torch, _DTYPE_ALIASES.get(compute, compute))
            if compute and compute != "auto" else None)

    async def aclose(self) -> None:
        with self._lock:
            self._model = self._tokenizer = None
            self._loaded = False
        import gc

        gc.collect()

    # -- inference --------------------------------------------------------------

    async def _agenerate(self, conversations: Sequence[Conversation],
                         params: GenerationParams) -> list[Completion]:
        batch = [chat_messages(c, engine=self.name) for c in conversations]
        size = params.batch_size or DEFAULT_BATCH_SIZE
        done: list[Completion] = []
        for start in range(0, len(batch), size):
            done += await asyncio.to_thread(self._generate, batch[start:start + size], params)
        return done

    def _generate(self, batch: list[list[dict[str, str]]], params: GenerationParams,
                  streamer: Any = None, stopping: Any = None) -> list[Completion]:
        import torch

        with self._lock:
            model, tok = self._ready()
            texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
                     for m in batch]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(model.device)
            try:
                with torch.inference_mode():
                    out = model.generate(**enc, **self._generate_kwargs(params),
                                         streamer=streamer, stopping_criteria=stopping)
            except (torch.OutOfMemoryError, MemoryError) as exc:
                raise EngineUnavailableError("out of memory", engine=self.name) from exc
            except (ValueError, IndexError) as exc:  # over-long input, bad token ids
                raise FatalEngineError(f"{type(exc).__name__}: {exc}", engine=self.name) from exc
        new = out[:, enc["input_ids"].shape[1]:]
        prompts = enc["attention_mask"].sum(dim=1).tolist()
        return [self._completion(row, n, params)
                for row, n in zip(new.tolist(), prompts, strict=True)]

    def _ready(self) -> tuple[Any, Any]:
        if self._model is None:
            raise EngineUnavailableError("engine was closed", engine=self.name)
        return self._model, self._tokenizer

    def _eos_ids(self, params: GenerationParams) -> list[int]:
        eos = self._model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [self._tokenizer.eos_token_id])
        return eos + list(params.stop_token_ids or [])

    def _generate_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens, "do_sample": params.temperature > 0,
            "eos_token_id": self._eos_ids(params), "pad_token_id": self._tokenizer.pad_token_id}
        if params.temperature > 0:
            if params.seed is not None:
                import torch

                torch.manual_seed(params.seed)
            kwargs.update(temperature=params.temperature, top_p=params.top_p,
                          top_k=params.top_k or 0, min_p=params.min_p or None)
        if params.stop_strings:
            kwargs.update(stop_strings=params.stop_strings, tokenizer=self._tokenizer)
        if params.logit_bias:
            bias = token_bias(params.logit_bias, engine=self.name)
            kwargs["sequence_bias"] = {(token,): value for token, value in bias.items()}
        return kwargs

    def _completion(self, row: list[int], prompt_tokens: int,
                    params: GenerationParams) -> Completion:
        """Tokens up to the first end token (kept in the count), text cut at stop strings."""
        eos = set(self._eos_ids(params))
        end = next((i for i, tok in enumerate(row) if tok in eos), None)
        tokens = row if end is None else row[:end]
        text = self._tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens)
        text, stopped = cut_at_stop(text, params.stop_strings)
        finish = "stop" if stopped or end is not None else "length"
        used = len(tokens) + (1 if end is not None else 0)
        return Completion(text, finish, Usage(prompt_tokens, used))

    async def _astream(self, conversation: Conversation,
                       params: GenerationParams) -> AsyncIterator[StreamChunk]:
        messages = chat_messages(conversation, engine=self.name)

        def work(emit: Emit, cancel: threading.Event) -> None:
            streamer, stopping = _streaming(self._ready()[1], params, emit, cancel)
            [done] = self._generate([messages], params, streamer, stopping)
            streamer.flush_stops()
            emit(StreamChunk("", done.finish_reason, done.usage))

        async for chunk in stream_from_thread(work):
            yield chunk


def _streaming(tokenizer: Any, params: GenerationParams, emit: Emit,
               cancel: threading.Event) -> tuple[Any, Any]:
    """A streamer that hands text to ``emit`` (stop strings held back), and a cancel check."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

    class _Streamer(TextStreamer):  # type: ignore[misc]  # transformers is untyped to us
        stops = StopStrings(params.stop_strings)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if out := self.stops.feed(text):
                emit(StreamChunk(out))

        def flush_stops(self) -> None:
            if out := self.stops.flush():
                emit(StreamChunk(out))

    class _Cancel(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

    streamer = _Streamer(tokenizer, skip_prompt=True,
                         skip_special_tokens=params.skip_special_tokens)
    return streamer, StoppingCriteriaList([_Cancel()])
