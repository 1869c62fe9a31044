"""Server-sent events, read off an aiohttp response.

    async for event, data in iter_sse(response.content):
        if data == "[DONE]": break
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def iter_sse(lines: AsyncIterable[bytes]) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` per event; ``event`` is "message" when the server names none.

    Multi-line ``data`` fields are joined with newlines; comments and ``id``/``retry``
    fields are skipped. A last event not followed by a blank line is still yielded.
    """
    event = "message"
    data: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
    if data:
        yield event, "\n".join(data)
