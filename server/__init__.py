"""inferline's OpenAI-compatible gateway over chains, engines and pipelines.

    from inferline.server import create_app
    app = create_app(chains, engines, pipelines, settings.server, log_settings=settings.log)
"""

from inferline.server.app import create_app
from inferline.server.auth import ApiKeys, check_bind

__all__ = ["ApiKeys", "check_bind", "create_app"]
