"""Bad requests get the right status and an OpenAI-style JSON error; the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import openai
import pytest
from structlog.testing import capture_logs

from tests.fixtures.fault_server import Scenario
from tests.fixtures.gateway import free_port, remote

pytestmark = pytest.mark.slow

GOOD = {"model": "echo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}

BAD_REQUESTS = [  # (body, status, code, param)
    (b'{"model": "echo", "messages": [', 400, "invalid_json", None),
    (b"\xff\xfe not utf-8", 400, "invalid_json", None),
    (json.dumps(["not", "an", "object"]).encode(), 400, "invalid_body", None),
    (json.dumps({"model": "echo"}).encode(), 400, "missing_required_parameter", "messages"),
    (json.dumps({**GOOD, "messages": []}).encode(), 400, "invalid_value", "messages"),
    (json.dumps({**GOOD, "max_tokens": "ten"}).encode(), 400, "invalid_value", "max_tokens"),
    (json.dumps({**GOOD, "temperature": "hot"}).encode(), 400, "invalid_value", "temperature"),
    (json.dumps({**GOOD, "messages": [{"role": "user", "content": 5}]}).encode(), 400,
     "invalid_value", "messages.0.content"),
    (json.dumps({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400,
     "invalid_value", "messages.0.role"),
    (json.dumps({**GOOD, "n": 2}).encode(), 400, "invalid_value", "n"),
    (json.dumps({**GOOD, "tools": [{"type": "function"}]}).encode(), 400,
     "missing_required_parameter", "tools.0.function"),
    (json.dumps({**GOOD, "functions": [{"name": "f"}]}).encode(), 400,
     "unsupported_parameter", "functions"),
    (json.dumps({**GOOD, "top_k": 5}).encode(), 400, "unsupported_parameter", "top_k"),
    (json.dumps({**GOOD, "model": "ehco"}).encode(), 404, "model_not_found", "model"),
    (json.dumps({**GOOD, "padding": "x" * 5000}).encode(), 413, "request_too_large", None),
]


@pytest.fixture
async def gw(gateway, fault_server):
    echo = remote(fault_server.url(Scenario()))
    return await gateway({"echo": echo}, max_body_bytes=4000)


async def test_each_bad_request_gets_its_status_and_the_server_keeps_serving(gw) -> None:
    async with aiohttp.ClientSession() as http:
        for body, status, code, param in BAD_REQUESTS:
            async with http.post(f"{gw.url}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"}) as resp:
                error = (await resp.json())["error"]
                assert (resp.status, error["code"], error["param"]) == (status, code, param), body
                assert error["message"] and "Traceback" not in error["message"]
            async with http.post(f"{gw.url}/v1/chat/completions", json=GOOD) as resp:
                assert resp.status == 200
                assert (await resp.json())["choices"][0]["message"]["content"] == "echo: hello"


async def test_unknown_model_names_the_closest_and_unknown_route_is_json(gw) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await gw.client().chat.completions.create(model="ehco", messages=GOOD["messages"])
    assert "did you mean 'echo'" in caught.value.body["message"]
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/v1/nothing") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_api_keys_are_checked_and_never_logged(gateway, fault_server) -> None:
    gw = await gateway({"echo": remote(fault_server.url(Scenario()))}, keys=["sk-right-key"])
    with capture_logs() as logs:
        with pytest.raises(openai.AuthenticationError) as caught:
            await gw.client("sk-wrong-key").chat.completions.create(**GOOD)
        reply = await gw.client("sk-right-key").chat.completions.create(**GOOD)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.url}/v1/models") as resp:  # no key at all
                assert resp.status == 401
            async with http.get(f"{gw.url}/health") as resp:  # probes need no key
                assert resp.status == 200
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    assert reply.choices[0].message.content == "echo: hello"
    assert "sk-" not in repr(logs)


async def test_all_engines_failed_is_503_listing_each_attempt(gateway) -> None:
    dead = {f"dead{i}": remote(f"http://127.0.0.1:{free_port()}/v1") for i in (1, 2)}
    gw = await gateway(dead, chains={"both": ["dead1", "dead2"]})
    client = gw.client()
    for stream in (False, True):  # a stream that never started is a plain JSON error too
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="both", messages=GOOD["messages"],
                                                 stream=stream)
        assert caught.value.status_code == 503
        assert caught.value.body["code"] == "all_engines_failed"
        assert [a["engine"] for a in caught.value.body["attempts"]] == ["dead1", "dead2"]


async def test_deeply_nested_body_is_invalid_json_not_a_crash(gateway, fault_server) -> None:
    gw = await gateway({"echo": remote(fault_server.url(Scenario()))})
    deep_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    deep_schema["json_schema"]["schema"]["x"] = json.loads("[" * 300 + "]" * 300)
    bodies = [b"[" * 100_000,  # the JSON decoder recurses once per [
              json.dumps({**GOOD, "response_format": deep_schema}).encode()]  # orjson stops at 255
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as http:
            for body in bodies:
                async with http.post(f"{gw.url}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}) as resp:
                    error = (await resp.json())["error"]
                    assert (resp.status, error["code"]) == (400, "invalid_json")
                    assert error["message"] == ("the request body is nested too deeply "
                                                "(over 100 levels)")
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []


async def test_a_request_aiohttp_cannot_parse_is_a_400_and_the_next_one_is_logged(
        gw, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp answers a malformed request before the app sees it: no access-log event for
    it and no error (the access log runs after every answer), then business as usual."""
    host, port = gw.url.removeprefix("http://").split(":")
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        async with aiohttp.ClientSession() as http, http.post(
                f"{gw.url}/v1/chat/completions", json=GOOD) as resp:
            assert resp.status == 200
    assert status_line.split()[1] == b"400", status_line
    assert [(e["status"], e["served_by"]) for e in logs if e["event"] == "http_request"] == [
        (200, "echo")]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
