"""Which addresses need keys, and keys that never show."""

from __future__ import annotations

import pytest

from inferline.errors import ConfigurationError
from inferline.server import ApiKeys, check_bind


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_keys(host: str) -> None:
    check_bind(host, ApiKeys([]), allow_public=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "myhost.example"])
def test_public_addresses_need_keys_or_an_explicit_flag(host: str) -> None:
    with pytest.raises(ConfigurationError, match="allow-unauthenticated-public"):
        check_bind(host, ApiKeys([]), allow_public=False)
    check_bind(host, ApiKeys(["k"]), allow_public=False)
    check_bind(host, ApiKeys([]), allow_public=True)


def test_keys_match_exactly_and_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY_ONE", "sk-one")
    monkeypatch.setenv("KEY_TWO", "sk-two")
    keys = ApiKeys.from_env(["KEY_ONE", "KEY_TWO"])
    assert keys.accepts("Bearer sk-two") and keys.accepts("bearer sk-one")
    for header in (None, "", "sk-one", "Bearer sk-on", "Bearer sk-one2", "Basic sk-one"):
        assert not keys.accepts(header)
    assert "sk-" not in repr(keys)
