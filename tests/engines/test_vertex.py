"""GoogleVertexInferenceEngine with google-auth's real service-account flow: the key
file's token_uri points at the fault server, which checks the signed JWT assertion."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from inferline.core.configs import ModelParams, RemoteParams
from inferline.core.types import Conversation
from inferline.engines.vertex import GoogleVertexInferenceEngine
from inferline.errors import EngineUnavailableError
from tests.fixtures.fault_server import FaultServer, Scenario, TokenEndpoint

PATH = "/v1beta1/projects/{project_id}/locations/{region}/endpoints/openapi/chat/completions"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, fault_server: FaultServer,
             monkeypatch: pytest.MonkeyPatch) -> Path:
    """A service-account key file whose token_uri is the local token endpoint."""
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    fault_server.token = TokenEndpoint(public_pem=public)
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "proj-from-key", "private_key_id": "k1",
        "private_key": pem, "client_email": "sa@proj-from-key.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": fault_server.token_uri}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("GOOGLE_CLOUD_REGION", "us-test1")
    return path


def make(fault_server: FaultServer, scenario: Scenario,
         **kwargs: str) -> GoogleVertexInferenceEngine:
    url = fault_server.url(scenario) + PATH
    return GoogleVertexInferenceEngine(ModelParams(model_name="google/gemini-test"),
                                       remote_params=RemoteParams(api_url=url), **kwargs)


async def test_bearer_from_service_account_reaches_the_endpoint(
        key_file: Path, fault_server: FaultServer) -> None:
    scenario = Scenario()
    async with make(fault_server, scenario) as engine:
        outs = await engine.ainfer([Conversation.from_prompt(f"q{i}") for i in range(8)])
    assert [o.last_message().text for o in outs] == [f"echo: q{i}" for i in range(8)]
    assert fault_server.token.issued == ["tok-1"]  # one token for the whole batch
    claims = fault_server.token.assertions[0]
    assert claims["iss"] == "sa@proj-from-key.iam.gserviceaccount.com"
    assert "cloud-platform" in claims["scope"]
    assert {r["headers"]["Authorization"] for r in scenario.requests} == {"Bearer tok-1"}
    assert "/projects/proj-from-key/locations/us-test1/" in scenario.requests[0]["path"]


async def test_token_is_refreshed_before_expiry(key_file: Path, fault_server: FaultServer) -> None:
    fault_server.token.expires_in = 2
    scenario = Scenario()
    engine = make(fault_server, scenario, project_id="explicit-proj")
    engine.token_refresh_margin_s = 1.0  # refresh when less than 1 s is left
    async with engine:
        await engine.ainfer([Conversation.from_prompt("a")])
        await engine.ainfer([Conversation.from_prompt("b")])  # token still has ~2 s
        await asyncio.sleep(1.2)
        await asyncio.gather(*(engine.ainfer([Conversation.from_prompt(f"c{i}")])
                               for i in range(5)))
    auth = [r["headers"]["Authorization"] for r in scenario.requests]
    assert auth[:2] == ["Bearer tok-1", "Bearer tok-1"]
    assert set(auth[2:]) == {"Bearer tok-2"}  # one shared refresh for five requests
    assert fault_server.token.issued == ["tok-1", "tok-2"]
    assert "/projects/explicit-proj/" in scenario.requests[0]["path"]


async def test_missing_region_is_unavailable(key_file: Path, fault_server: FaultServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_CLOUD_REGION")
    with pytest.raises(EngineUnavailableError, match="GOOGLE_CLOUD_REGION"):
        await make(fault_server, Scenario()).ainfer([Conversation.from_prompt("x")])


async def test_no_credentials_is_unavailable(fault_server: FaultServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(EngineUnavailableError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        await make(fault_server, Scenario()).ainfer([Conversation.from_prompt("x")])


def test_default_url_is_the_seed_template() -> None:
    engine = GoogleVertexInferenceEngine(ModelParams(model_name="google/gemini-1.5-pro"))
    assert engine.api_url == ("https://{region}-aiplatform.googleapis.com/v1beta1/projects/"
                              "{project_id}/locations/{region}/endpoints/openapi/chat/completions")


async def test_rejected_credentials_are_unavailable(key_file: Path,
                                                    fault_server: FaultServer) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    fault_server.token.public_pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    scenario = Scenario()
    async with make(fault_server, scenario) as engine:
        with pytest.raises(EngineUnavailableError, match="credentials rejected"):
            await engine.ainfer([Conversation.from_prompt("x")])
    assert scenario.requests == []  # nothing sent without a token
