"""What a request carries through the middlewares to its handler.

    request[DEADLINE]     # loop time by which the answer must be done
    request[LOG_FIELDS]   # extra key=value fields for the request's access-log event
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

REQUEST_ID = web.RequestKey("request_id", str)
DEADLINE = web.RequestKey("deadline", float)
LOG_FIELDS = web.RequestKey("log_fields", dict[str, Any])
