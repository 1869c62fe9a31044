"""The gateway over a real vLLM server: structured output asked for the OpenAI way."""

from __future__ import annotations

import json

import pytest

from inferline.core.configs import ModelParams
from inferline.settings.model import EngineSettings

pytestmark = pytest.mark.slow

SCHEMA = {"type": "object", "properties": {"capital": {"type": "string"}},
          "required": ["capital"], "additionalProperties": False}


async def test_json_schema_response_format_is_enforced(gateway, vllm_server) -> None:
    vllm = EngineSettings(type="REMOTE_VLLM", model=ModelParams(model_name=vllm_server.model),
                          remote_params={"api_url": vllm_server.base_url, "max_retries": 0})
    gw = await gateway({"vllm": vllm})
    reply = await gw.client().chat.completions.create(
        model="vllm", max_tokens=40, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": SCHEMA}})
    answer = json.loads(reply.choices[0].message.content)
    assert set(answer) == {"capital"} and isinstance(answer["capital"], str)
    assert reply.model_extra["inferline"]["served_by"] == "vllm"
