"""inferline settings: named engines, fallback chains, server and logging, layered per deployment.

    from inferline.settings import load_settings
    settings = load_settings("deploy.yaml", env="prod")
"""

from inferline.settings.loader import load_settings
from inferline.settings.model import (
    ChainSettings,
    EngineSettings,
    InferlineSettings,
    LogSettings,
    ServerSettings,
)

__all__ = ["ChainSettings", "EngineSettings", "InferlineSettings", "LogSettings",
           "ServerSettings", "load_settings"]
