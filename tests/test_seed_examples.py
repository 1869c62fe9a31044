"""Every Python example of the seed guide (Oumi's inference-engine docs, ``oumi`` -> ``inferline``)
constructs its engine and answers ``get_supported_params()`` with no GPU, network or API key."""

from __future__ import annotations

from inferline.core.configs import ModelParams, RemoteParams
from inferline.inference import (
    AnthropicInferenceEngine,
    GoogleVertexInferenceEngine,
    LlamaCppInferenceEngine,
    NativeTextInferenceEngine,
    RemoteInferenceEngine,
    RemoteVLLMInferenceEngine,
    VLLMInferenceEngine,
)


def test_local_examples() -> None:
    engines = [
        VLLMInferenceEngine(ModelParams(model_name="meta-llama/Llama-3.2-1B-Instruct")),
        VLLMInferenceEngine(ModelParams(model_name="meta-llama/Meta-Llama-3.1-8B-Instruct")),
        VLLMInferenceEngine(ModelParams(
            model_name="meta-llama/Meta-Llama-3.1-8B-Instruct",
            model_kwargs={"tensor_parallel_size": 2, "gpu_memory_utilization": 1.0,
                          "enable_prefix_caching": True})),
        LlamaCppInferenceEngine(ModelParams(
            model_name="model.gguf",
            model_kwargs={"n_gpu_layers": 0, "n_ctx": 2048, "n_batch": 512, "low_vram": True})),
        NativeTextInferenceEngine(ModelParams(
            model_name="meta-llama/Meta-Llama-3.1-8B-Instruct",
            model_kwargs={"device_map": "auto", "torch_dtype": "float16"})),
    ]
    # "4-bit Quantization": the seed builds only these params; an engine takes them as they are
    model_params = ModelParams(model_kwargs={"load_in_4bit": True})
    engines.append(NativeTextInferenceEngine(model_params))
    for engine in engines:
        assert {"max_new_tokens", "temperature", "top_p"} <= engine.get_supported_params()
    assert engines[-1].options.load_in_4bit is True


def test_remote_and_cloud_examples() -> None:
    anthropic = AnthropicInferenceEngine(
        model_params=ModelParams(model_name="claude-3-5-sonnet-20240620"),
        remote_params=RemoteParams(api_url="https://api.anthropic.com/v1/messages",
                                   api_key_env_varname="ANTHROPIC_API_KEY"))
    vllm = RemoteVLLMInferenceEngine(
        model_params=ModelParams(model_name="meta-llama/Meta-Llama-3.1-8B-Instruct"),
        remote_params=RemoteParams(api_url="http://localhost:8000"))
    vertex = GoogleVertexInferenceEngine(
        model_params=ModelParams(model_name="google/gemini-1.5-pro"),
        remote_params=RemoteParams(api_url="https://{region}-aiplatform.googleapis.com/v1beta1/"
                                   "projects/{project_id}/locations/{region}/endpoints/openapi/"
                                   "chat/completions"))
    clouds = [RemoteInferenceEngine(model_params=ModelParams(model_name=model),
                                    remote_params=RemoteParams(api_url=url,
                                                               api_key_env_varname=key))
              for model, url, key in [
                  ("gemini-1.5-flash",
                   "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
                   "GEMINI_API_KEY"),
                  ("gpt-4o-mini", "https://api.openai.com/v1/chat/completions", "OPENAI_API_KEY"),
                  ("meta-llama/Llama-3.2-1B-Instruct",
                   "https://api.parasail.io/v1/chat/completions", "PARASAIL_API_KEY")]]
    for engine in [anthropic, vllm, vertex, *clouds]:
        assert {"max_new_tokens", "temperature"} <= engine.get_supported_params()
    assert "top_k" in vllm.get_supported_params()
