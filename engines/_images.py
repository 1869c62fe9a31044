"""Images in messages, as bytes + MIME type, for the HTTP protocols.

    mime, data = image_bytes(item)       # ContentItem with an image path or binary
    url = data_url(item)                 # "data:image/png;base64,..." (or the URL itself)
"""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path

from inferline.core.types import ContentItem, ContentType
from inferline.errors import FatalEngineError

_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
          (b"RIFF", "image/webp"))


def sniff_mime(data: bytes) -> str:
    """The image type from its first bytes (PNG, JPEG, GIF, WebP); PNG if unknown."""
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), "image/png")


def image_bytes(item: ContentItem) -> tuple[str, bytes]:
    """``(mime, bytes)`` of an image given by path or binary; a bad path fails its row."""
    if item.type is ContentType.IMAGE_BINARY:
        data = item.binary or b""
        return sniff_mime(data), data
    path = Path(item.content or "")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FatalEngineError(f"cannot read image {path}: {exc.strerror}") from exc
    return mimetypes.guess_type(path.name)[0] or sniff_mime(data), data


def data_url(item: ContentItem) -> str:
    """An ``image_url`` for OpenAI-style APIs: the URL as given, else a base64 data URL."""
    if item.type is ContentType.IMAGE_URL:
        return item.content or ""
    mime, data = image_bytes(item)
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
