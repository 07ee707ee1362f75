"""OpenAI message content (a string or content parts) as Anthropic content blocks.

Text and refusal parts become text blocks, empty or whitespace-only text left out (Anthropic
rejects it); ``image_url`` parts become image blocks, a ``data:`` URL as a base64 source and an
http(s) URL as a url source (Anthropic fetches it), ``detail`` dropped; a ``file`` part
carrying a PDF data: URL becomes a document block. ``cache_control`` on a part (as LiteLLM
accepts it) is kept, so clients can use Anthropic's prompt caching through Berry. Anything
else raises ``Unsupported`` with the part's path.
"""

from __future__ import annotations

from typing import Any

from .base import Unsupported

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# The part types each kind of message may carry.
SYSTEM_PARTS = frozenset({"text"})
USER_PARTS = frozenset({"text", "image_url", "file"})
ASSISTANT_PARTS = frozenset({"text", "refusal"})
TOOL_PARTS = frozenset({"text", "image_url", "file"})


def content_blocks(content: Any, path: str, allowed: frozenset[str]) -> list[dict[str, Any]]:
    """A message's ``content`` (a string or OpenAI content parts) as Anthropic blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise Unsupported(f"'{path}.content' must be a string or an array.", param=path)
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        at = f"{path}.content[{index}]"
        if not isinstance(part, dict) or part.get("type") not in allowed:
            kind = part.get("type") if isinstance(part, dict) else None
            raise Unsupported(
                f"Claude backends do not take content parts of type {str(kind)[:40]!r} "
                f"in this message ('{at}').",
                param=at,
            )
        kind = part["type"]
        if kind == "text" or kind == "refusal":
            text = part.get(kind)
            if not isinstance(text, str):
                raise Unsupported(f"'{at}.{kind}' must be a string.", param=at)
            if not text.strip():
                continue
            block: dict[str, Any] = {"type": "text", "text": text}
        elif kind == "image_url":
            block = image_block(part.get("image_url"), at)
        else:
            block = document_block(part.get("file"), at)
        cache_control = part.get("cache_control")
        if isinstance(cache_control, dict):
            block["cache_control"] = cache_control
        blocks.append(block)
    return blocks


def _data_url(url: str, at: str) -> tuple[str, str]:
    """(media type, base64 data) of a ``data:`` URL."""
    header, comma, data = url.partition(",")
    media_type, *parameters = header[5:].split(";")
    if not comma or "base64" not in parameters:
        raise Unsupported(f"'{at}' must be a base64 data: URL.", param=at)
    return media_type.strip().lower(), data


def image_block(image: Any, at: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise Unsupported(f"'{at}.image_url.url' must be a string.", param=at)
    if url.startswith("data:"):
        media_type, data = _data_url(url, at)
        if media_type == "image/jpg":
            media_type = "image/jpeg"
        if media_type not in IMAGE_MEDIA_TYPES:
            raise Unsupported(
                f"Claude backends take JPEG, PNG, GIF and WebP images, not {media_type[:60]!r} "
                f"('{at}').",
                param=at,
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise Unsupported(f"'{at}' must be an http(s) or a data: URL.", param=at)


def document_block(file: Any, at: str) -> dict[str, Any]:
    """An OpenAI ``file`` part carrying a PDF as a data: URL (file ids mean nothing here)."""
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise Unsupported(
            f"Claude backends take files as 'file_data' data: URLs only ('{at}').", param=at
        )
    media_type, data = _data_url(data_url, at)
    if media_type != "application/pdf":
        raise Unsupported(
            f"Claude backends take PDF files only, not {media_type[:60]!r} ('{at}').", param=at
        )
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }
