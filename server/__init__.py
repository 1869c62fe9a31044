"""inferline's OpenAI-compatible gateway over chains, engines and pipelines.

    from inferline.server import create_app
    app = create_app(chains, engines, pipelines, settings.server, log_settings=settings.log)

The names below load on first use: the container imports ``inferline.server.state`` in every
process (a Ray actor, ``inferline run``), which should not pay for the gateway's app.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as mypy sees them
    from inferline.server.app import create_app
    from inferline.server.auth import ApiKeys, check_bind

_HOMES = {"create_app": "inferline.server.app", "ApiKeys": "inferline.server.auth",
          "check_bind": "inferline.server.auth"}
__all__ = ["ApiKeys", "check_bind", "create_app"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'inferline.server' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
