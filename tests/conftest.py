"""Shared test set-up: environment isolation, plus every fixture module in tests/fixtures/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem != "__init__"
)

#: the environment the suite started with, for `cloud` tests that need a real key
REAL_ENV = dict(os.environ)

_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "USER",
         "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "XDG_CACHE_HOME", "INFERLINE_DATA_DIR",
         "PIP_CACHE_DIR", "CI", "TERM", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with only the basic environment: no INFERLINE_*, no API keys."""
    for key in list(os.environ):
        if key not in _KEEP:
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
