"""``pip install .`` installs only ``inferline`` at the top level; the layers are subpackages."""

from __future__ import annotations

import os
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
    # `pip install .`: the installed copy (not this checkout) imports, finds its packaged
    # settings and runs the CLI from a directory that holds no source
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    code = ("import inferline, inferline.engines.base, inferline.containers;"
            "from inferline.settings import load_settings;"
            "print(inferline.__file__); print(load_settings().chains['default'].engines)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(site))
    assert "local_llamacpp" in out.stdout.splitlines()[1]
    cli = subprocess.run([sys.executable, "-m", "inferline", "engines"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "LLAMACPP" in cli.stdout, cli.stderr


def test_editable_install_imports_layers_from_any_directory(tmp_path: Path) -> None:
    code = "import inferline.engines.base, inferline.settings, inferline.containers; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    top = subprocess.run([sys.executable, "-c", "import engines"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert "No module named 'engines'" in top.stderr
