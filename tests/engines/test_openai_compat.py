"""OpenAI-compatible engines against a real vLLM server, plus the request they send."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferline.core.configs import (
    GenerationParams,
    GuidedDecodingParams,
    InferenceConfig,
    ModelParams,
    RemoteParams,
)
from inferline.core.types import ContentItem, ContentType, Conversation, Message, Role
from inferline.engines import build_engine
from inferline.engines.openai_compat import (
    GoogleGeminiInferenceEngine,
    OpenAIInferenceEngine,
    ParasailInferenceEngine,
    RemoteInferenceEngine,
    RemoteVLLMInferenceEngine,
)
from inferline.errors import (
    ConfigurationError,
    EngineUnavailableError,
    UnsupportedParameterError,
)
from tests.fixtures.fault_server import FaultServer, Scenario
from tests.fixtures.vllm_server import VLLMServer

# SmolLM2-135M answers this in French without the system line; with it, "Paris".
PARIS = Conversation.from_prompt("What is the capital of France?", system="Answer in one word.")
GREEDY = GenerationParams(max_new_tokens=16, temperature=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [RemoteInferenceEngine, RemoteVLLMInferenceEngine,
                                 OpenAIInferenceEngine])
def test_paris_from_vllm_server(vllm_server: VLLMServer, cls: type[RemoteInferenceEngine],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "not-checked-by-vllm")
    engine = cls(ModelParams(model_name=vllm_server.model), generation_params=GREEDY,
                 remote_params=RemoteParams(api_url=f"{vllm_server.base_url}/chat/completions"))
    with engine:
        [out] = engine.infer([PARIS])
    assert "Paris" in out.last_message().text
    assert out.metadata["finish_reason"] == "stop"
    usage = out.metadata["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0


@pytest.mark.slow
async def test_streaming_from_vllm_server(vllm_server: VLLMServer) -> None:
    engine = RemoteInferenceEngine(ModelParams(model_name=vllm_server.model),
                                   generation_params=GREEDY,
                                   remote_params=RemoteParams(api_url=vllm_server.root_url))
    async with engine:
        chunks = [c async for c in engine.astream(PARIS)]
    assert len(chunks) > 2 and "Paris" in "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.completion_tokens > 0


@pytest.mark.slow
async def test_vllm_guided_choice_and_extra_sampling(vllm_server: VLLMServer) -> None:
    params = GenerationParams(max_new_tokens=8, top_k=5, min_p=0.05,
                              guided_decoding=GuidedDecodingParams(choice=["red", "blue"]))
    engine = RemoteVLLMInferenceEngine(ModelParams(model_name=vllm_server.model),
                                       generation_params=params,
                                       remote_params=RemoteParams(api_url=vllm_server.base_url))
    async with engine:
        outs = await engine.ainfer([Conversation.from_prompt(f"Name color number {i}.")
                                    for i in range(3)])
    assert all(o.last_message().text in ("red", "blue") for o in outs)


@pytest.mark.slow
async def test_vllm_guided_json(vllm_server: VLLMServer) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
              "required": ["city"], "additionalProperties": False}
    engine = RemoteVLLMInferenceEngine(
        ModelParams(model_name=vllm_server.model),
        generation_params=GenerationParams(max_new_tokens=24,
                                           guided_decoding=GuidedDecodingParams(json=schema)),
        remote_params=RemoteParams(api_url=vllm_server.base_url))
    async with engine:
        [out] = await engine.ainfer([PARIS])
    assert set(json.loads(out.last_message().text)) == {"city"}


@pytest.mark.parametrize(("given", "used"), [
    ("http://h:8000/v1/chat/completions", "http://h:8000/v1/chat/completions"),
    ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
    ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
    ("http://h:8000", "http://h:8000/v1/chat/completions"),
    ("https://g.example/v1beta/openai", "https://g.example/v1beta/openai/chat/completions"),
])
def test_api_url_forms(given: str, used: str) -> None:
    engine = RemoteInferenceEngine(ModelParams(model_name="m"),
                                   remote_params=RemoteParams(api_url=given))
    assert engine.api_url == used


@pytest.mark.parametrize(("cls", "url", "var"), [
    (OpenAIInferenceEngine, "https://api.openai.com/v1/chat/completions", "OPENAI_API_KEY"),
    (GoogleGeminiInferenceEngine,
     "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions", "GEMINI_API_KEY"),
    (ParasailInferenceEngine, "https://api.parasail.io/v1/chat/completions", "PARASAIL_API_KEY"),
])
def test_cloud_defaults_and_missing_key(cls: type[RemoteInferenceEngine], url: str,
                                        var: str) -> None:
    engine = cls(ModelParams(model_name="m"))
    assert engine.api_url == url and engine.remote_params.api_key_env_varname == var
    with pytest.raises(EngineUnavailableError, match=var):
        engine.load()


def test_remote_engine_without_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="remote_params.api_url"):
        build_engine("REMOTE", ModelParams(model_name="m"))


def test_unsupported_params_are_refused() -> None:
    with pytest.raises(UnsupportedParameterError, match="top_k"):
        RemoteInferenceEngine(ModelParams(model_name="m"),
                              generation_params=GenerationParams(top_k=3),
                              remote_params=RemoteParams(api_url="http://h"))
    engine = RemoteInferenceEngine(ModelParams(model_name="m"), remote_params=RemoteParams(api_url="http://h"))
    regex = GenerationParams(guided_decoding=GuidedDecodingParams(regex="[0-9]+"))
    with pytest.raises(UnsupportedParameterError, match="guided_decoding.regex"):
        engine.infer([PARIS], InferenceConfig(generation=regex))


async def test_request_body_sampling_images_and_key(fault_server: FaultServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc")
    png = tmp_path / "dot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 16)
    scenario = Scenario()
    conv = Conversation(messages=[Message(role=Role.USER, content=[
        ContentItem(type=ContentType.TEXT, content="describe"),
        ContentItem(type=ContentType.IMAGE_PATH, content=str(png)),
        ContentItem(type=ContentType.IMAGE_URL, content="https://x/y.jpg")])])
    engine = OpenAIInferenceEngine(
        ModelParams(model_name="gpt-x"),
        generation_params=GenerationParams(max_new_tokens=7, top_p=0.5, stop_strings=["\n"],
                                           seed=3),
        remote_params=RemoteParams(api_url=fault_server.url(scenario) + "/v1"))
    async with engine:
        [out] = await engine.ainfer([conv])
    request = scenario.requests[0]
    body, parts = request["body"], request["body"]["messages"][0]["content"]
    assert request["headers"]["Authorization"] == "Bearer sk-abc"
    assert request["headers"]["Content-Type"] == "application/json"
    assert body["max_completion_tokens"] == 7 and body["top_p"] == 0.5
    assert body["stop"] == ["\n"] and body["seed"] == 3 and body["model"] == "gpt-x"
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0K")
    assert parts[2] == {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}}
    assert out.last_message().text == "echo: describe"


async def test_length_finish_reason_and_usage(fault_server: FaultServer) -> None:
    engine = RemoteInferenceEngine(ModelParams(model_name="m"),
                                   generation_params=GenerationParams(max_new_tokens=2),
                                   remote_params=RemoteParams(api_url=fault_server.url(Scenario())))
    async with engine:
        [out] = await engine.ainfer([Conversation.from_prompt("one two three")])
    assert out.last_message().text == "echo: one"
    assert out.metadata["finish_reason"] == "length"
    assert out.metadata["usage"]["completion_tokens"] == 2


@pytest.mark.cloud
@pytest.mark.parametrize(("engine_type", "model", "variable"), [
    ("OPENAI", "gpt-4o-mini", "OPENAI_API_KEY"),
    ("ANTHROPIC", "claude-3-5-haiku-latest", "ANTHROPIC_API_KEY"),
    ("GOOGLE_GEMINI", "gemini-1.5-flash", "GEMINI_API_KEY"),
])
def test_real_cloud_vendor_answers(engine_type: str, model: str, variable: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the vendor's own API, with the vendor's default URL; needs that key set."""
    from tests.conftest import REAL_ENV

    if not REAL_ENV.get(variable):
        pytest.skip(f"{variable} is not set")
    monkeypatch.setenv(variable, REAL_ENV[variable])
    engine = build_engine(engine_type, ModelParams(model_name=model),
                          generation_params=GenerationParams(max_new_tokens=16))
    with engine:
        [out] = engine.infer([Conversation.from_prompt("What is the capital of France?",
                                                       system="Answer in one word.")])
    assert "Paris" in out.messages[-1].text
    assert out.metadata["usage"]["completion_tokens"] > 0
