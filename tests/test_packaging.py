"""``pip install .`` installs only ``inferline`` at the top level; the layers are subpackages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_only_the_inferline_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, timeout=300)
    [wheel] = tmp_path.glob("inferline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"inferline"}
    for module in ("engines/base.py", "pipelines/fallback.py", "containers/__init__.py",
                   "settings/loader.py", "settings/defaults.yaml", "settings/profiles/prod.yaml",
                   "server/app.py", "cli/infer.py", "py.typed"):
        assert f"inferline/{module}" in names


def test_editable_install_imports_layers_from_any_directory(tmp_path: Path) -> None:
    code = "import inferline.engines.base, inferline.settings, inferline.containers; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    top = subprocess.run([sys.executable, "-c", "import engines"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert "No module named 'engines'" in top.stderr
