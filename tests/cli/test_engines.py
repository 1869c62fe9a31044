"""``inferline engines`` says which engines can run here and, if not, why: no GPU, no
Google credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferline.cli.engines import vllm_gpu_reason
from tests.cli.test_cli import cli


def lines(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines()}


def test_vertex_needs_credentials_found_on_disk(tmp_path: Path) -> None:
    key = tmp_path / "sa.json"
    without = lines(cli("engines", env={"HOME": str(tmp_path)}).stdout)["GOOGLE_VERTEX"]
    assert "unavailable: no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS" in without
    missing = lines(cli("engines", env={"GOOGLE_APPLICATION_CREDENTIALS": str(key)}).stdout)
    assert f"names a missing file: {key}" in missing["GOOGLE_VERTEX"]
    key.write_text("{}")
    given = lines(cli("engines", env={"GOOGLE_APPLICATION_CREDENTIALS": str(key)}).stdout)
    assert given["GOOGLE_VERTEX"].endswith("ready")
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    (gcloud / "application_default_credentials.json").write_text("{}")
    login = lines(cli("engines", env={"CLOUDSDK_CONFIG": str(gcloud)}).stdout)
    assert login["GOOGLE_VERTEX"].endswith("ready")


def test_gpu_build_of_vllm_without_a_gpu_is_unavailable() -> None:
    assert "no GPU" in vllm_gpu_reason("cuda", gpu=False)
    assert vllm_gpu_reason("cuda", gpu=True) is None
    assert vllm_gpu_reason("cpu", gpu=False) is None



@pytest.mark.slow
def test_check_loads_named_engines_and_reports_a_wrong_answer(tmp_path: Path,
                                                               smollm_gguf: Path) -> None:
    blind = "{% for m in messages %}<|im_start|>{{ m['role'] }}\nHi<|im_end|>\n{% endfor %}"
    settings = tmp_path / "s.yaml"
    settings.write_text(f"""
engines:
  good: {{type: LLAMACPP, model: {{model_name: smollm2-135m}}}}
  blind: {{type: LLAMACPP, model: {{model_name: smollm2-135m, chat_template: "{blind}"}}}}
""")
    out = cli("engines", "--check", "--settings", str(settings))
    found = lines(out.stdout)
    assert out.returncode == 1, out.stderr
    assert "ok in" in found["good"] and "Paris" in found["good"]
    assert ("FAILED: blind: self-check failed: asked 'What is the capital of France?'"
            in found["blind"])
    assert found["openai"].endswith("unavailable: API key variable OPENAI_API_KEY is not set")
