"""JSON out, fast: orjson, with the standard library for what orjson refuses.

    body = dumps({"id": "chatcmpl-1", ...})   # UTF-8 bytes, compact

orjson is several times faster than ``json.dumps`` on an answer; the two differ only in
spacing and in non-ASCII text left as UTF-8 (what ``ensure_ascii=False`` gives). What orjson
cannot encode (integers over 64 bits, say) goes through ``json.dumps`` as before.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(data: Any) -> bytes:
    try:
        return orjson.dumps(data, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(data, ensure_ascii=False).encode()
