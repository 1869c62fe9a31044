"""API keys, read from the environment variables the settings name, sent as
``Authorization: Bearer KEY`` (OpenAI clients) or ``x-api-key: KEY`` (Anthropic clients).

    keys = ApiKeys.from_env(["INFERLINE_API_KEY"])   # ConfigurationError if one is unset
    check_bind("0.0.0.0", keys, allow_public=False)   # ConfigurationError: refuses
    app.middlewares.append(auth_middleware(keys))

Keys are compared in constant time and never logged, echoed or repr'd. ``/health``
and ``/ready`` stay open so that load balancers can probe without a key.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from pydantic import SecretBytes

from inferline.errors import ConfigurationError
from inferline.server.errors import ApiError

OPEN_PATHS = frozenset({"/health", "/ready"})


class ApiKeys:
    """The accepted keys. Empty means the server is unauthenticated."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [SecretBytes(k.encode()) for k in keys]  # masked in any repr or dump

    def __repr__(self) -> str:
        return f"ApiKeys(<{len(self._keys)} keys>)"

    def __bool__(self) -> bool:
        return bool(self._keys)

    @classmethod
    def from_env(cls, varnames: Sequence[str]) -> ApiKeys:
        missing = [name for name in varnames if not os.environ.get(name)]
        if missing:
            raise ConfigurationError(f"API key variable {missing[0]} is not set",
                                     key="server.api_key_env_varnames")
        return cls([os.environ[name] for name in varnames])

    def accepts(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries one of the keys."""
        scheme, _, token = (header or "").partition(" ")
        return self.accepts_key(token) and scheme.lower() == "bearer"

    def accepts_key(self, token: str | None) -> bool:
        """Whether ``token`` (an ``x-api-key`` header, say) is one of the keys."""
        given = (token or "").strip().encode()
        # every key is compared, so timing says nothing about which one nearly matched
        matches = [hmac.compare_digest(given, key.get_secret_value()) for key in self._keys]
        return any(matches)


def auth_middleware(keys: ApiKeys) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        if keys and request.path not in OPEN_PATHS and not (
                keys.accepts(headers.get("Authorization"))
                or keys.accepts_key(headers.get("x-api-key"))):
            raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer KEY' "
                           "or 'x-api-key: KEY')", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)
    return authenticate


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, keys: ApiKeys, *, allow_public: bool) -> None:
    """Refuse to serve a non-loopback address without keys, unless told to."""
    if keys or allow_public or is_loopback(host):
        return
    raise ConfigurationError(
        f"refusing to bind {host} without API keys: set server.api_key_env_varnames, "
        "or pass --allow-unauthenticated-public (settings: server.allow_unauthenticated_public)",
        key="server.host")
