"""Every ``>>>`` example in inferline's docstrings runs and shows what it says."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

# engines/, pipelines/, ... are mapped onto inferline.* (pyproject's package-dir), so an
# editable install's inferline.__path__ does not reach them: walk each layer.
LAYERS = ("inferline", "inferline.engines", "inferline.pipelines", "inferline.containers",
          "inferline.settings", "inferline.server")


def _modules() -> list[str]:
    names = set(LAYERS)
    for layer in LAYERS:
        path = importlib.import_module(layer).__path__  # packages only: they are light
        names.update(m.name for m in pkgutil.walk_packages(path, f"{layer}."))
    return sorted(n for n in names if not n.endswith(".__main__"))  # that one runs the CLI


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=report.append)
    assert not runner.failures, f"{name}: a docstring example failed\n" + "".join(report)
