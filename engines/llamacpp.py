"""llama.cpp (llama-cpp-python) on GGUF files: the CPU and quantized-model engine.

The chat template comes from the GGUF (or ``ModelParams.chat_template``). A
llama.cpp model is not thread-safe, so calls are serialized with a lock and run
off the event loop.

    engine = LlamaCppInferenceEngine(ModelParams(
        model_name="smollm2-135m",  # or a .gguf path
        model_kwargs={"n_gpu_layers": 0, "n_ctx": 2048, "n_batch": 512, "low_vram": True}))
    engine.infer([Conversation.from_prompt("What is the capital of France?")])
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import Field

from inferline.core.configs import GenerationParams, GuidedDecodingParams, InferenceEngineType
from inferline.core.types import Conversation
from inferline.engines._gbnf import choice_gbnf, regex_gbnf
from inferline.engines.base import Completion, StreamChunk, Usage
from inferline.engines.local import (
    Emit,
    LocalInferenceEngine,
    Options,
    chat_messages,
    check_model_fits,
    stream_from_thread,
    token_bias,
)
from inferline.engines.models import resolve_model
from inferline.errors import (
    ConfigurationError,
    EngineUnavailableError,
    FatalEngineError,
    UnsupportedRequestError,
)

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from llama_cpp.llama_grammar import LlamaGrammar

log = structlog.get_logger(__name__)


class LlamaCppOptions(Options):
    """``model_kwargs`` for llama.cpp, passed to ``llama_cpp.Llama``.

    ``n_ctx`` defaults to ``ModelParams.model_max_length`` or 2048; threads to
    every core this process may use. ``low_vram`` (the seed's key) keeps the KV
    cache in system RAM (llama.cpp's ``offload_kqv=False``) unless that is set.
    """

    n_gpu_layers: int = 0
    n_ctx: int | None = Field(default=None, ge=0)
    n_batch: int = Field(default=512, gt=0)
    n_ubatch: int | None = Field(default=None, gt=0)
    n_threads: int | None = Field(default=None, gt=0)
    n_threads_batch: int | None = Field(default=None, gt=0)
    low_vram: bool = False
    offload_kqv: bool | None = None
    #: on by default, as in llama.cpp's own tools: the non-flash prompt path with an F16 KV
    #: cache computes wrong results on AVX2 kernels (README: "llama.cpp on every CPU")
    flash_attn: bool = True
    use_mmap: bool = True
    use_mlock: bool = False
    main_gpu: int = 0
    split_mode: int = 1
    tensor_split: list[float] | None = None
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0
    type_k: int | None = None
    type_v: int | None = None
    verbose: bool = False

    def llama_kwargs(self, default_ctx: int) -> dict[str, Any]:
        kwargs = self.model_dump(exclude={"low_vram"}, exclude_none=True)
        threads = self.n_threads or len(os.sched_getaffinity(0))
        kwargs.update(n_ctx=self.n_ctx if self.n_ctx is not None else default_ctx,
                      n_threads=threads, n_threads_batch=self.n_threads_batch or threads,
                      offload_kqv=self.offload_kqv if self.offload_kqv is not None
                      else not self.low_vram)
        return kwargs


class LlamaCppInferenceEngine(LocalInferenceEngine):
    """Runs a GGUF model in-process with llama-cpp-python; streams; one call at a time."""

    engine_type = InferenceEngineType.LLAMACPP
    supported_params = frozenset({
        "max_new_tokens", "temperature", "top_p", "top_k", "min_p", "frequency_penalty",
        "presence_penalty", "stop_strings", "seed", "logit_bias", "guided_decoding", "batch_size"})
    can_stream = True
    options_class = LlamaCppOptions
    options: LlamaCppOptions

    _llm: Llama | None = None
    _formatter: Jinja2ChatFormatter | None = None
    _grammars: dict[str, LlamaGrammar]  # GBNF -> its checked grammar

    # -- lifecycle --------------------------------------------------------------

    def preflight(self) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise EngineUnavailableError("llama-cpp-python is not installed: "
                                         "pip install 'inferline[llamacpp]'", engine=self.name)
        # With layers offloaded the weights live on a GPU llama.cpp picks; check RAM only on CPU.
        device = "cpu" if self.options.n_gpu_layers == 0 else None
        check_model_fits(self.model_params.model_name, "gguf", device=device, engine=self.name)

    def _load(self) -> None:
        path = resolve_model(self.model_params.model_name, "gguf", engine=self.name)
        import llama_cpp

        kwargs = self.options.llama_kwargs(self.model_params.model_max_length or 2048)
        try:
            llm = llama_cpp.Llama(model_path=path, **kwargs)
        except (ValueError, RuntimeError, OSError, MemoryError) as exc:
            raise EngineUnavailableError(f"cannot load {path}: {exc}", engine=self.name) from exc
        self._formatter, self._grammars = self._chat_formatter(llm), {}
        llm.chat_handler = self._formatter.to_chat_handler()
        self._llm = llm
        log.info("engine_loaded", engine=self.name, model=path, n_ctx=kwargs["n_ctx"],
                 n_threads=kwargs["n_threads"])

    def _chat_formatter(self, llm: Llama) -> Jinja2ChatFormatter:
        """The model's own chat template (as llama-cpp-python builds it), or ours if given."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.model_params.chat_template or llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigurationError("the GGUF has no chat template; set one",
                                     key="model.chat_template")
        eos, bos = llm.token_eos(), llm.token_bos()

        def text(tok: int) -> str:
            return llm.detokenize([tok], special=True).decode() if tok != -1 else ""

        return Jinja2ChatFormatter(template=template, eos_token=text(eos), bos_token=text(bos),
                                   stop_token_ids=[eos])

    async def aclose(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
            self._llm, self._formatter, self._loaded = None, None, False

    # -- inference --------------------------------------------------------------

    def _sampling(self, params: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            max_tokens=params.max_new_tokens, temperature=params.temperature,
            top_p=params.top_p, top_k=params.top_k or 0, min_p=params.min_p, typical_p=1.0,
            repeat_penalty=1.0, frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty, stop=list(params.stop_strings or []),
            seed=params.seed)
        if params.logit_bias:
            kwargs["logit_bias"] = token_bias(params.logit_bias, engine=self.name)
        if (guided := params.guided_decoding) is not None:
            try:
                kwargs["grammar"] = self._grammar(grammar(guided, engine=self.name))
            except UnsupportedRequestError:
                if guided.required:
                    raise
        return kwargs

    def _grammar(self, gbnf: str) -> LlamaGrammar:
        """``gbnf`` parsed once by llama.cpp itself: llama-cpp-python would crash the process
        on a grammar llama.cpp cannot parse (its converters can write such grammars)."""
        if gbnf not in self._grammars:
            import llama_cpp
            from llama_cpp import llama_grammar

            sampler = llama_cpp.llama_sampler_init_grammar(self._ready()._model.vocab,
                                                           gbnf.encode(), b"root")
            if not sampler:
                raise UnsupportedRequestError("generation.guided_decoding: llama.cpp cannot "
                                              f"parse the grammar it gives:\n{gbnf[:500]}",
                                              engine=self.name)
            llama_cpp.llama_sampler_free(sampler)
            if len(self._grammars) >= 256:  # many distinct schemas (a gateway's clients)
                self._grammars.clear()
            self._grammars[gbnf] = llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False)
        return self._grammars[gbnf]

    async def _agenerate(self, conversations: Sequence[Conversation],
                         params: GenerationParams) -> list[Completion]:
        batch = [chat_messages(c, engine=self.name) for c in conversations]
        return await asyncio.to_thread(self._generate_all, batch, self._sampling(params))

    def _generate_all(self, batch: list[list[dict[str, str]]],
                      kwargs: dict[str, Any]) -> list[Completion]:
        with self._lock:
            return [self._complete(messages, kwargs) for messages in batch]

    def _complete(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> Completion:
        # (llama_cpp types messages as TypedDicts; ours are plain dicts of the same shape)
        with self._one_call(kwargs) as call:
            out = self._call(lambda: self._ready().create_chat_completion(
                messages, **call))  # type: ignore[arg-type]
        choice, usage = out["choices"][0], out["usage"]
        return Completion(choice["message"]["content"] or "", choice["finish_reason"],
                          Usage(usage["prompt_tokens"], usage["completion_tokens"]))

    @contextmanager
    def _one_call(self, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``kwargs`` for one generation. Greedy decoding under a grammar checks the model's
        top token alone and masks the vocabulary only when the grammar refuses it (what
        llama.cpp's own sampler does): the same tokens as llama-cpp-python's grammar
        sampler, which masks all 49k tokens at every step, at a fraction of the cost."""
        greedy = (kwargs["temperature"] == 0 and not kwargs["frequency_penalty"]
                  and not kwargs["presence_penalty"] and "logit_bias" not in kwargs)
        if kwargs.get("grammar") is None or not greedy:
            yield kwargs
            return
        from llama_cpp import LogitsProcessorList

        check = TopTokenGrammar(self._ready(), kwargs["grammar"])
        try:
            yield {**kwargs, "grammar": None, "logits_processor": LogitsProcessorList([check])}
        finally:
            check.close()

    def _ready(self) -> Llama:
        if self._llm is None:
            raise EngineUnavailableError("engine was closed", engine=self.name)
        return self._llm

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ValueError as exc:  # e.g. "Requested tokens (N) exceed context window of M"
            raise FatalEngineError(str(exc), engine=self.name) from exc
        except MemoryError as exc:
            raise EngineUnavailableError("out of memory", engine=self.name) from exc

    async def _astream(self, conversation: Conversation,
                       params: GenerationParams) -> AsyncIterator[StreamChunk]:
        messages, kwargs = chat_messages(conversation, engine=self.name), self._sampling(params)

        def work(emit: Emit, cancel: threading.Event) -> None:
            with self._lock:
                self._call(lambda: self._stream_locked(messages, kwargs, emit, cancel))

        async for chunk in stream_from_thread(work):
            yield chunk

    def _stream_locked(self, messages: list[dict[str, str]], kwargs: dict[str, Any],
                       emit: Emit, cancel: threading.Event) -> None:
        llm = self._ready()
        prompt_tokens = self._prompt_tokens(llm, messages)
        finish = None
        with self._one_call(kwargs) as call:
            # with stream=True, a generator of chunk dicts (llama_cpp's union type says less)
            chunks: Any = llm.create_chat_completion(
                messages, stream=True, **call)  # type: ignore[arg-type]
            for chunk in chunks:
                if cancel.is_set():
                    chunks.close()
                    return
                choice = chunk["choices"][0]
                finish = choice["finish_reason"] or finish
                if text := choice["delta"].get("content"):
                    emit(StreamChunk(text))
        # The last sampled token is never evaluated, and an end-of-text token isn't counted
        # (after a stop string the count is one short of the non-streamed one).
        done = llm.n_tokens - prompt_tokens + (1 if finish == "length" else 0)
        emit(StreamChunk("", finish, Usage(prompt_tokens, done)))

    def _prompt_tokens(self, llm: Llama, messages: list[dict[str, str]]) -> int:
        """Tokens in the prompt, counted exactly as the chat handler builds it."""
        result = self._formatter(messages=messages)  # type: ignore[misc, arg-type]
        return len(llm.tokenize(result.prompt.encode(), add_bos=not result.added_special,
                                special=True))


class TopTokenGrammar:
    """A llama-cpp-python logits processor for greedy decoding under a grammar: the top token
    is checked against the grammar alone. When the grammar refuses it, the next best tokens
    are checked, and only when none of them wins for sure are the logits of every token the
    grammar refuses set to -inf. It advances the grammar with the tokens the model took, seen
    at the next call; ``close()`` frees the llama.cpp sampler."""

    FEW = 64  # tokens checked after a refusal, before the whole vocabulary

    def __init__(self, llm: Llama, gbnf: LlamaGrammar) -> None:
        import llama_cpp
        import numpy as np

        self._api, self._np = llama_cpp, np
        self._sampler = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, gbnf._grammar.encode(), gbnf._root.encode())
        self._buffers: dict[int, Any] = {}  # token data arrays, by size
        self._seen = -1  # tokens of the sequence already given to the grammar

    def _apply(self, ids: Any, logits: Any) -> Any:
        """``logits`` of the tokens ``ids``, with -inf for those the grammar refuses now."""
        np = self._np
        if len(ids) not in self._buffers:
            data = np.zeros(len(ids), dtype=np.dtype(
                [("id", np.intc), ("logit", np.single), ("p", np.single)], align=True))
            self._buffers[len(ids)] = data, self._api.llama_token_data_array(
                data=data.ctypes.data_as(self._api.llama_token_data_p),
                size=len(ids), selected=-1, sorted=False)
        data, array = self._buffers[len(ids)]
        data["id"], data["logit"] = ids, logits
        self._api.llama_sampler_apply(self._sampler, ctypes.byref(array))
        return data["logit"].copy()

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        np = self._np
        if self._seen < 0:
            self._seen = len(input_ids)  # the prompt
        for token in input_ids[self._seen:]:
            self._api.llama_sampler_accept(self._sampler, int(token))
        self._seen = len(input_ids)
        top = np.argmax(scores)
        if self._apply(top[None], scores[top, None])[0] != -np.inf:
            return scores
        # The best token the grammar allows among the next best is the answer when its
        # logit beats every token outside them (a tie could go to one outside).
        few = np.argpartition(scores, -self.FEW)[-self.FEW:]
        allowed = self._apply(few, scores[few])
        if allowed.max() > scores[few].min():
            out = scores.copy()
            out[few] = allowed
            return out
        return self._apply(np.arange(len(scores)), scores)

    def close(self) -> None:
        if self._sampler:
            self._api.llama_sampler_free(self._sampler)
            self._sampler = None


def grammar(guided: GuidedDecodingParams, *, engine: str) -> str:
    """GBNF that only lets the model write what ``guided`` allows: a JSON value matching the
    schema, text that fully matches the regex, or exactly one of the choices."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        if guided.json_schema is not None:
            kind = "json"
            # JSON forbids control characters in strings; llama-cpp-python's converter lets
            # them in (a raw newline mid-string, and the answer no longer parses)
            gbnf = str(json_schema_to_gbnf(json.dumps(guided.json_schema)))
            return gbnf.replace(r'char ::= [^"\\] ', r'char ::= [^"\\\x7F\x00-\x1F] ')
        if guided.regex is not None:
            kind = "regex"
            return regex_gbnf(guided.regex)
        kind = "choice"
        return choice_gbnf(guided.choice or [])
    except (ValueError, AssertionError, KeyError, TypeError, RecursionError) as exc:
        # llama-cpp-python's schema converter asserts on what it cannot translate
        raise UnsupportedRequestError(f"generation.guided_decoding.{kind}: cannot be written as "
                                      f"a llama.cpp grammar ({str(exc) or type(exc).__name__})",
                                      engine=engine) from None
