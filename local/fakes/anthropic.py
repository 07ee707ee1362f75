"""A strict fake of Anthropic's Messages API (``POST /v1/messages``) for tests and benchmarks.

Written from Anthropic's public API reference and the official SDK's types (anthropic 2.14,
which sends ``anthropic-version: 2026-10-21`` and its key as ``Authorization: Bearer``), and
proven faithful by tests/test_fake_anthropic.py, which drives it with that SDK. It is as
strict as the real service where a translation layer can go wrong: unknown fields, OpenAI
shapes (``role: "tool"``, ``image_url`` blocks, ``{"type": "function"}`` tools), tool_use /
tool_result pairing, empty text, sampling parameters the version or model no longer takes.
Error messages copy the real ones where they are publicly known (GitHub issues quoting
API responses); the few marked "unverified" below are plausible wordings.

Answers are deterministic and driven by a mutable ``Behaviour``: text, tool calls built from
the tool's ``input_schema``, thinking blocks, stop sequences, ``max_tokens`` cuts, usage, SSE
streams, and failure modes (overload, throttling, 5xx, hangs, mid-stream errors, cut streams).

Base URL: the Anthropic SDK's ``base_url`` is the server root (it appends ``/v1/messages``
itself), so ``FakeAnthropic.base_url`` is the root; ``v1_url`` is root + ``/v1`` for
callers that configure the versioned prefix (Berry accepts both).
"""

from __future__ import annotations

import binascii
import dataclasses
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson

from .server import (
    FakeApp,
    FakeServer,
    Receive,
    Recorder,
    Scope,
    Seen,
    Send,
    StreamSender,
    drop_connection,
    read_request,
    send_bytes,
    send_half_then_drop,
    sleep_ms,
    wait_or_gone,
)
from .text import split_text

DEFAULT_API_KEY = "sk-ant-fake-0123456789abcdef"
MESSAGES_PATH = "/v1/messages"
LEGACY_VERSION = "2023-06-01"
CURRENT_VERSION = "2026-10-21"  # drops temperature/top_p/top_k (anthropic SDK >= 2.0 sends it)
VERSIONS = (LEGACY_VERSION, CURRENT_VERSION)
MODES = (
    "ok",
    "overloaded",
    "rate_limited",
    "server_error",
    "invalid_request",
    "hang",
    "stream_error",
    "cut",
)


@dataclasses.dataclass
class Behaviour:
    """Live knobs of the fake; read on every request, so changes apply at once."""

    mode: str = "ok"
    text: str = "Hello from fake Anthropic"
    latency_ms: float = 0  # before answering anything (headers included)
    first_byte_delay_ms: float = 0  # streams: after the headers, before message_start
    event_delay_ms: float = 0  # streams: between two SSE events
    text_deltas: int = 3  # text_delta / thinking_delta events per block (fewer if short)
    json_deltas: int = 3  # input_json_delta fragments per tool_use (after the empty one)
    parallel_tool_calls: bool = False  # two tool_use blocks unless disable_parallel_tool_use
    tool_preamble: str = ""  # a text block before the tool_use blocks when not empty
    thinking_text: str = "Let me think about this step by step."  # when thinking is on
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    retry_after_seconds: int = 1  # "rate_limited" mode
    error_message: str = "Invalid request (fake Anthropic)"  # "invalid_request" mode
    models: list[str] | None = None  # accepted model ids; None accepts any


class ApiError(Exception):
    """An answer the real API gives instead of a message: status, error type and message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


# --- Validation primitives, worded like the API's pydantic errors ("<path>: <problem>") ----


def _at(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _quoted_choices(options: tuple[str, ...]) -> str:
    quoted = [f"'{option}'" for option in options]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _dict(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{path}: Input should be a valid dictionary")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(f"{path}: Input should be a valid list")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{path}: Input should be a valid string")
    return value


def _optional_string(value: Any, path: str) -> None:
    if value is not None:
        _string(value, path)


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(f"{path}: Input should be a valid boolean")
    return value


def _integer(value: Any, path: str, minimum: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{path}: Input should be a valid integer")
    if minimum is not None and value < minimum:
        raise _invalid(f"{path}: Input should be greater than or equal to {minimum}")
    return value


def _number(value: Any, path: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{path}: Input should be a valid number")
    if value < low:
        raise _invalid(f"{path}: Input should be greater than or equal to {low:g}")
    if value > high:
        raise _invalid(f"{path}: Input should be less than or equal to {high:g}")
    return float(value)


def _literal(value: Any, path: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise _invalid(f"{path}: Input should be {_quoted_choices(options)}")
    return value


def _pattern(value: Any, path: str, regex: re.Pattern[str]) -> str:
    text = _string(value, path)
    if not regex.fullmatch(text):
        raise _invalid(f"{path}: String should match pattern '{regex.pattern}'")
    return text


def _fields(
    obj: dict[str, Any], path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    # pydantic reports missing fields before the extra ones.
    for name in required:
        if name not in obj:
            raise _invalid(f"{_at(path, name)}: Field required")
    for name in obj:
        if name not in required and name not in optional:
            raise _invalid(f"{_at(path, name)}: Extra inputs are not permitted")


def _tag(value: Any, path: str, tags: Mapping[str, object]) -> tuple[str, dict[str, Any]]:
    """A tagged union member: its tag and object. The API's paths then carry the tag."""
    obj = _dict(value, path)
    tag = obj.get("type")
    if not isinstance(tag, str):
        raise _invalid(f"{path}: Unable to extract tag using discriminator 'type'")
    if tag not in tags:
        expected = ", ".join(f"'{name}'" for name in tags)
        raise _invalid(
            f"{path}: Input tag '{tag}' found using 'type' does not match any of the "
            f"expected tags: {expected}"
        )
    return tag, obj


# --- Content blocks --------------------------------------------------------------------

# Tool and tool_use ids: https://platform.claude.com/docs/en/api/messages (quoted in 400s).
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_IMAGE_MAGIC: dict[str, Callable[[bytes], bool]] = {
    "image/png": lambda data: data.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": lambda data: data.startswith(b"\xff\xd8\xff"),
    "image/gif": lambda data: data.startswith((b"GIF87a", b"GIF89a")),
    "image/webp": lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP",
}


@dataclasses.dataclass(frozen=True)
class _Where:
    """Context a block is validated in: API version, the message role, the error area."""

    version: str
    role: str  # "user", "assistant", "system" or "nested" (inside a tool_result/document)
    area: str  # "messages" or "system": prefix of the API's content-wide error messages


BlockCheck = Callable[[dict[str, Any], str, _Where], None]


def _cache_control(value: Any, path: str) -> None:
    if value is None:
        return
    _, obj = _tag(value, path, {"ephemeral": None})
    _fields(obj, f"{path}.ephemeral", ("type",), ("ttl",))
    if "ttl" in obj:
        _literal(obj["ttl"], f"{path}.ephemeral.ttl", ("5m", "1h"))


def _text_block(block: dict[str, Any], path: str, where: _Where) -> None:
    _fields(block, path, ("text", "type"), ("cache_control", "citations"))
    text = _string(block["text"], f"{path}.text")
    _cache_control(block.get("cache_control"), f"{path}.cache_control")
    citations = block.get("citations")
    if citations is not None:
        _list(citations, f"{path}.citations")
        if citations and where.version == CURRENT_VERSION and where.role == "user":
            # 2026-10-21 rejects citations on user text (wording unverified).
            raise _invalid(f"{path}.citations: citations are not allowed on user text blocks")
    if not text:
        raise _invalid(f"{where.area}: text content blocks must be non-empty")
    if not text.strip():
        raise _invalid(f"{where.area}: text content blocks must contain non-whitespace text")


def _base64(data: Any, path: str) -> bytes:
    text = _string(data, path)
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        # Wording unverified; a "data:image/png;base64," prefix lands here.
        raise _invalid(f"{path}: invalid base64 data") from None


def _image_source(value: Any, path: str) -> None:
    kind, source = _tag(value, path, {"base64": None, "url": None, "file": None})
    at = f"{path}.{kind}"
    if kind == "base64":
        _fields(source, at, ("data", "media_type", "type"))
        media_type = _literal(source["media_type"], f"{at}.media_type", _IMAGE_TYPES)
        if not _IMAGE_MAGIC[media_type](_base64(source["data"], f"{at}.data")):
            raise _invalid(f"{at}.data: Image does not match the provided media type {media_type}")
    elif kind == "url":
        _fields(source, at, ("type", "url"))
        url = _string(source["url"], f"{at}.url")
        if not url.startswith(("https://", "http://")):  # the API fetches it: data: URLs fail
            raise _invalid(
                f"{at}.url: Unable to download the file. Please verify the URL and try again."
            )
    else:
        _fields(source, at, ("file_id", "type"))
        _string(source["file_id"], f"{at}.file_id")


def _image_block(block: dict[str, Any], path: str, where: _Where) -> None:
    _fields(block, path, ("source", "type"), ("cache_control", "transformations"))
    _image_source(block["source"], f"{path}.source")
    _cache_control(block.get("cache_control"), f"{path}.cache_control")


def _document_source(value: Any, path: str, where: _Where) -> None:
    kinds = {"base64": None, "text": None, "content": None, "url": None, "file": None}
    kind, source = _tag(value, path, kinds)
    at = f"{path}.{kind}"
    if kind == "base64":
        _fields(source, at, ("data", "media_type", "type"))
        _literal(source["media_type"], f"{at}.media_type", ("application/pdf",))
        _base64(source["data"], f"{at}.data")
    elif kind == "text":
        _fields(source, at, ("data", "media_type", "type"))
        _literal(source["media_type"], f"{at}.media_type", ("text/plain",))
        _string(source["data"], f"{at}.data")
    elif kind == "content":
        _fields(source, at, ("content", "type"))
        content = source["content"]
        if not isinstance(content, str):
            nested = dataclasses.replace(where, role="nested")
            _blocks(_list(content, f"{at}.content"), f"{at}.content", nested, _SOURCE_BLOCKS)
    elif kind == "url":
        _fields(source, at, ("type", "url"))
        _string(source["url"], f"{at}.url")
    else:
        _fields(source, at, ("file_id", "type"))
        _string(source["file_id"], f"{at}.file_id")


def _document_block(block: dict[str, Any], path: str, where: _Where) -> None:
    optional = ("cache_control", "citations", "context", "title")
    _fields(block, path, ("source", "type"), optional)
    if where.version == CURRENT_VERSION and where.role == "assistant":
        # 2026-10-21 rejects documents in assistant turns (wording unverified).
        raise _invalid(f"{path}: document blocks are not allowed in assistant messages")
    _document_source(block["source"], f"{path}.source", where)
    _cache_control(block.get("cache_control"), f"{path}.cache_control")
    citations = block.get("citations")
    if citations is not None:
        config = _dict(citations, f"{path}.citations")
        _fields(config, f"{path}.citations", (), ("enabled",))
        if "enabled" in config:
            _boolean(config["enabled"], f"{path}.citations.enabled")
    _optional_string(block.get("context"), f"{path}.context")
    _optional_string(block.get("title"), f"{path}.title")


def _search_result_block(block: dict[str, Any], path: str, where: _Where) -> None:
    _fields(block, path, ("content", "source", "title", "type"), ("cache_control", "citations"))
    _string(block["source"], f"{path}.source")
    _string(block["title"], f"{path}.title")
    nested = dataclasses.replace(where, role="nested")
    for index, item in enumerate(_list(block["content"], f"{path}.content")):
        at = f"{path}.content.{index}"
        _literal(_dict(item, at).get("type"), f"{at}.type", ("text",))
        _text_block(item, at, nested)
    _cache_control(block.get("cache_control"), f"{path}.cache_control")


def _tool_use_block(block: dict[str, Any], path: str, where: _Where) -> None:
    _fields(
        block, path, ("id", "input", "name", "type"), ("cache_control", "caller", "toolset_name")
    )
    _pattern(block["id"], f"{path}.id", _TOOL_ID)
    _string(block["name"], f"{path}.name")
    _dict(block["input"], f"{path}.input")
    _cache_control(block.get("cache_control"), f"{path}.cache_control")


def _tool_result_block(block: dict[str, Any], path: str, where: _Where) -> None:
    optional = ("cache_control", "content", "is_error", "toolset_name")
    _fields(block, path, ("tool_use_id", "type"), optional)
    _pattern(block["tool_use_id"], f"{path}.tool_use_id", _TOOL_ID)
    content = block.get("content")
    if content is not None and not isinstance(content, str):
        nested = dataclasses.replace(where, role="nested")
        _blocks(_list(content, f"{path}.content"), f"{path}.content", nested, _RESULT_BLOCKS)
    if "is_error" in block:
        _boolean(block["is_error"], f"{path}.is_error")
    _cache_control(block.get("cache_control"), f"{path}.cache_control")


def _thinking_block(block: dict[str, Any], path: str, where: _Where) -> None:
    _fields(block, path, ("signature", "thinking", "type"))
    _string(block["signature"], f"{path}.signature")
    _string(block["thinking"], f"{path}.thinking")


def _redacted_thinking_block(block: dict[str, Any], path: str, where: _Where) -> None:
    _fields(block, path, ("data", "type"))
    _string(block["data"], f"{path}.data")


def _container_upload_block(block: dict[str, Any], path: str, where: _Where) -> None:
    _fields(block, path, ("file_id", "type"), ("cache_control",))
    _string(block["file_id"], f"{path}.file_id")


def _server_block(block: dict[str, Any], path: str, where: _Where) -> None:
    """Server-tool blocks echoed back from earlier answers: accepted without a deep check."""


_MESSAGE_BLOCKS: dict[str, BlockCheck] = {
    "text": _text_block,
    "image": _image_block,
    "document": _document_block,
    "search_result": _search_result_block,
    "thinking": _thinking_block,
    "redacted_thinking": _redacted_thinking_block,
    "tool_use": _tool_use_block,
    "tool_result": _tool_result_block,
    "container_upload": _container_upload_block,
    **dict.fromkeys(
        (
            "server_tool_use",
            "web_search_tool_result",
            "web_fetch_tool_result",
            "code_execution_tool_result",
            "bash_code_execution_tool_result",
            "text_editor_code_execution_tool_result",
            "tool_search_tool_result",
        ),
        _server_block,
    ),
}
_RESULT_BLOCKS: dict[str, BlockCheck] = {
    "text": _text_block,
    "image": _image_block,
    "search_result": _search_result_block,
    "document": _document_block,
    "tool_reference": _server_block,
    "browser_state": _server_block,
}
_SOURCE_BLOCKS: dict[str, BlockCheck] = {"text": _text_block, "image": _image_block}
_SYSTEM_BLOCKS: dict[str, BlockCheck] = {"text": _text_block}
# Blocks that only make sense in one role (wording of these errors unverified).
_ROLE_ONLY = {
    "tool_use": "assistant",
    "tool_result": "user",
    "thinking": "assistant",
    "redacted_thinking": "assistant",
}


def _blocks(
    items: list[Any], path: str, where: _Where, allowed: Mapping[str, BlockCheck]
) -> list[dict[str, Any]]:
    checked: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        at = _at(path, index)
        kind, block = _tag(item, at, allowed)
        only = _ROLE_ONLY.get(kind)
        if only is not None and where.role in ("user", "assistant") and where.role != only:
            raise _invalid(f"{at}: `{kind}` blocks are only allowed in `{only}` messages")
        allowed[kind](block, f"{at}.{kind}", where)
        checked.append(block)
    return checked


# --- Model capabilities (from Anthropic's model docs and the 400s they quote) ---------------

_MODEL_GENERATION = re.compile(
    r"^claude-(?:opus|sonnet|haiku|fable|mythos)-(\d+)(?:-(\d))?(?:-\d{8})?$"
)


def model_generation(model: str) -> tuple[int, int] | None:
    """(major, minor) of a current-style Claude model id; None for names it does not know."""
    if model == "claude-mythos-preview":
        return (4, 7)  # released before Opus 4.8; no sampling parameters
    match = _MODEL_GENERATION.fullmatch(model)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def takes_system_messages(model: str) -> bool:
    """Mid-conversation ``role: "system"`` messages: Claude Opus 4.8 and later models only.

    Model names it does not know behave like older models: no system messages, and the
    sampling parameters taken (within their ranges) under 2023-06-01.
    """
    generation = model_generation(model)
    return generation is not None and generation >= (4, 8) and model != "claude-mythos-preview"


def _check_sampling(body: dict[str, Any], model: str) -> None:
    """Sampling parameters under 2023-06-01 (2026-10-21 removed them from the schema)."""
    present = [name for name in ("temperature", "top_p", "top_k") if name in body]
    if "temperature" in body:
        _number(body["temperature"], "temperature", 0.0, 1.0)
    if "top_p" in body:
        _number(body["top_p"], "top_p", 0.0, 1.0)
    if "top_k" in body:
        _integer(body["top_k"], "top_k", minimum=0)
    generation = model_generation(model)
    if generation is None or not present:
        return
    if generation >= (4, 7):  # Opus 4.7 and later reject them, even at their defaults
        raise _invalid(f"`{present[0]}` is deprecated for this model.")
    if generation >= (4, 1) and "temperature" in body and "top_p" in body:
        raise _invalid(
            "`temperature` and `top_p` cannot both be specified for this model. "
            "Please use only one."
        )


# --- The request as a whole ------------------------------------------------------------

_FIELDS = (
    "cache_control",
    "container",
    "diagnostics",
    "inference_geo",
    "metadata",
    "output_config",
    "service_tier",
    "speed",
    "stop_sequences",
    "stream",
    "system",
    "thinking",
    "tool_choice",
    "tools",
)
_SAMPLING_FIELDS = ("temperature", "top_k", "top_p")
# Accepted only with an anthropic-beta header (the SDK's beta.messages.create); not checked.
_BETA_FIELDS = (
    "billing_policy",
    "compaction",
    "context_management",
    "fallback_credit_token",
    "fallbacks",
    "mcp_servers",
    "output_format",
    "thread",
)
# Anthropic-defined (server and client) tools: accepted by type, their fields not checked.
_TYPED_TOOLS = (
    "bash_20250124",
    "browser_toolset_20260801",
    "code_execution_20250522",
    "code_execution_20250825",
    "code_execution_20260120",
    "code_execution_20260521",
    "computer_toolset_20260801",
    "memory_20250818",
    "text_editor_20250124",
    "text_editor_20250429",
    "text_editor_20250728",
    "tool_search_tool_bm25_20251119",
    "tool_search_tool_regex_20251119",
    "web_fetch_20250910",
    "web_fetch_20260209",
    "web_fetch_20260309",
    "web_fetch_20260318",
    "web_search_20250305",
    "web_search_20260209",
    "web_search_20260318",
)


@dataclasses.dataclass
class Turn:
    """Consecutive messages of one role, merged as the API does; blocks keep their origin."""

    role: str
    blocks: list[tuple[int, int, dict[str, Any]]]  # (message index, block index, block)


@dataclasses.dataclass
class ParsedRequest:
    """What the answer depends on, once the request passed validation."""

    model: str
    max_tokens: int
    stream: bool
    stop_sequences: list[str]
    tools: list[dict[str, Any]]  # custom (client) tools, in order
    tool_choice: dict[str, Any]
    thinking: bool
    turns: list[Turn]
    prompt_words: int


def _message_content(
    message: dict[str, Any], index: int, last: bool, where: _Where
) -> list[dict[str, Any]]:
    path = f"messages.{index}"
    content = message["content"]
    final_assistant = last and where.role == "assistant"
    allowed = _SYSTEM_BLOCKS if where.role == "system" else _MESSAGE_BLOCKS
    if isinstance(content, str):
        blocks = [{"type": "text", "text": content}] if content else []
        if content and not content.strip():
            raise _invalid("messages: text content blocks must contain non-whitespace text")
    else:
        blocks = _blocks(_list(content, f"{path}.content"), f"{path}.content", where, allowed)
    if not blocks and not final_assistant:
        raise _invalid(
            f"{path}: all messages must have non-empty content except for the optional "
            "final assistant message"
        )
    if final_assistant and blocks and blocks[-1].get("type") == "text":
        text = blocks[-1]["text"]
        if text != text.rstrip():
            raise _invalid("messages: final assistant content cannot end with trailing whitespace")
    return blocks


def _messages(value: Any, version: str, model: str) -> list[Turn]:
    messages = _list(value, "messages")
    if not messages:
        raise _invalid("messages: at least one message is required")
    turns: list[Turn] = []
    previous_role = ""
    for index, item in enumerate(messages):
        path = f"messages.{index}"
        message = _dict(item, path)
        _fields(message, path, ("content", "role"))
        role = _literal(message["role"], f"{path}.role", ("user", "assistant", "system"))
        where = _Where(version, role, "messages")
        blocks = _message_content(message, index, index == len(messages) - 1, where)
        if role == "system":
            if not takes_system_messages(model):
                raise _invalid("role 'system' is not supported on this model")
            if previous_role != "user":
                # Placement rule from the docs; this wording is unverified.
                raise _invalid(
                    f"{path}: a `system` message must immediately follow a `user` message"
                )
        elif turns and turns[-1].role == role:
            turns[-1].blocks.extend((index, j, block) for j, block in enumerate(blocks))
        else:
            turns.append(Turn(role, [(index, j, block) for j, block in enumerate(blocks)]))
        previous_role = role
    _check_tool_pairing(turns)
    return turns


def _check_tool_pairing(turns: list[Turn]) -> None:
    """Every tool_use answered by a leading tool_result in the next turn, and vice versa."""
    for position, turn in enumerate(turns):
        if turn.role == "assistant":
            uses = [(i, b["id"]) for i, _, b in turn.blocks if b.get("type") == "tool_use"]
            if not uses:
                continue
            answered: set[str] = set()
            if position + 1 < len(turns):
                for _, _, block in turns[position + 1].blocks:
                    if block.get("type") != "tool_result":
                        break  # tool_result blocks must come first in the user turn
                    answered.add(block["tool_use_id"])
            missing = [(i, tool_id) for i, tool_id in uses if tool_id not in answered]
            if missing:
                ids = ", ".join(tool_id for _, tool_id in missing)
                raise _invalid(
                    f"messages.{missing[0][0]}: `tool_use` ids were found without `tool_result` "
                    f"blocks immediately after: {ids}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message."
                )
        else:
            previous = turns[position - 1] if position else None
            offered = {
                b["id"]
                for _, _, b in (previous.blocks if previous else [])
                if b.get("type") == "tool_use"
            }
            for i, j, block in turn.blocks:
                if block.get("type") == "tool_result" and block["tool_use_id"] not in offered:
                    raise _invalid(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` block "
                        "must have a corresponding `tool_use` block in the previous message."
                    )


def _system(value: Any, version: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}] if value else []
    where = _Where(version, "system", "system")
    return _blocks(_list(value, "system"), "system", where, _SYSTEM_BLOCKS)


def _tools(value: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The custom tools, and the names of all tools (custom and Anthropic-defined)."""
    custom: list[dict[str, Any]] = []
    names: list[str] = []
    for index, item in enumerate(_list(value, "tools")):
        path = f"tools.{index}"
        tool = _dict(item, path)
        kind = tool.get("type")
        if kind is None or kind == "custom":
            at = f"{path}.custom"
            optional = (
                "allowed_callers",
                "cache_control",
                "defer_loading",
                "description",
                "eager_input_streaming",
                "input_examples",
                "strict",
                "type",
            )
            _fields(tool, at, ("input_schema", "name"), optional)
            name = _pattern(tool["name"], f"{at}.name", _TOOL_NAME)
            schema = _dict(tool["input_schema"], f"{at}.input_schema")
            if "type" not in schema:
                raise _invalid(f"{at}.input_schema.type: Field required")
            _literal(schema["type"], f"{at}.input_schema.type", ("object",))
            if "description" in tool:
                _string(tool["description"], f"{at}.description")
            _cache_control(tool.get("cache_control"), f"{at}.cache_control")
            custom.append(tool)
        else:  # an unknown type, e.g. OpenAI's {"type": "function", "function": {...}}
            kind, _ = _tag(tool, path, dict.fromkeys(("custom", *_TYPED_TOOLS)))
            name = _string(tool.get("name"), f"{path}.{kind}.name")
        if name in names:
            raise _invalid("tools: Tool names must be unique.")
        names.append(name)
    return custom, names


def _tool_choice(value: Any, tool_names: list[str]) -> dict[str, Any]:
    kind, choice = _tag(value, "tool_choice", dict.fromkeys(("auto", "any", "tool", "none")))
    at = f"tool_choice.{kind}"
    if kind == "none":
        _fields(choice, at, ("type",))
    elif kind == "tool":
        _fields(choice, at, ("name", "type"), ("disable_parallel_tool_use",))
        name = _string(choice["name"], f"{at}.name")
        if name not in tool_names:
            raise _invalid(f"{at}.name: Tool '{name}' not found in provided tools")  # unverified
    else:
        _fields(choice, at, ("type",), ("disable_parallel_tool_use",))
    if "disable_parallel_tool_use" in choice:
        _boolean(choice["disable_parallel_tool_use"], f"{at}.disable_parallel_tool_use")
    return choice


def _thinking(value: Any, max_tokens: int) -> bool:
    tags = dict.fromkeys(("enabled", "disabled", "adaptive", "between_tools"))
    kind, config = _tag(value, "thinking", tags)
    at = f"thinking.{kind}"
    if kind == "enabled":
        _fields(config, at, ("budget_tokens", "type"), ("display",))
        budget = _integer(config["budget_tokens"], f"{at}.budget_tokens", minimum=1024)
        if max_tokens <= budget:
            raise _invalid(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                "documentation at https://docs.claude.com/en/docs/build-with-claude/"
                "extended-thinking#max-tokens-and-context-window-size"
            )
    elif kind == "adaptive":
        _fields(config, at, ("type",), ("display",))
    else:
        _fields(config, at, ("type",))
    if "display" in config and config["display"] is not None:
        _literal(config["display"], f"{at}.display", ("summarized", "omitted"))
    return kind in ("enabled", "adaptive")


def _small_fields(body: dict[str, Any]) -> None:
    if "metadata" in body:
        metadata = _dict(body["metadata"], "metadata")
        _fields(metadata, "metadata", (), ("user_id",))
        _optional_string(metadata.get("user_id"), "metadata.user_id")
    if "service_tier" in body:
        _literal(body["service_tier"], "service_tier", ("auto", "standard_only"))
    if body.get("speed") is not None:
        _literal(body["speed"], "speed", ("standard", "fast"))
    _optional_string(body.get("inference_geo"), "inference_geo")
    _cache_control(body.get("cache_control"), "cache_control")
    if body.get("output_config") is not None:
        config = _dict(body["output_config"], "output_config")
        _fields(config, "output_config", (), ("effort", "format"))
        if config.get("effort") is not None:
            efforts = ("low", "medium", "high", "xhigh", "max")
            _literal(config["effort"], "output_config.effort", efforts)
        if config.get("format") is not None:
            kind, output = _tag(config["format"], "output_config.format", {"json_schema": None})
            _fields(output, f"output_config.format.{kind}", ("schema", "type"))
            _dict(output["schema"], f"output_config.format.{kind}.schema")
    if body.get("diagnostics") is not None:
        _dict(body["diagnostics"], "diagnostics")
    container = body.get("container")
    if container is not None and not isinstance(container, str | dict):
        raise _invalid("container: Input should be a valid string")


def parse_request(body: Any, version: str, beta: bool) -> ParsedRequest:
    """Validate a Messages request as the real API does; raises ApiError on the first problem."""
    request = _dict(body, "body")  # wording unverified (a JSON array or scalar body)
    required = ("max_tokens", "messages", "model")
    for name in required:
        if name not in request:
            raise _invalid(f"{name}: Field required")
    allowed = {*required, *_FIELDS}
    if version == LEGACY_VERSION:
        allowed.update(_SAMPLING_FIELDS)
    if beta:
        allowed.update(_BETA_FIELDS)
    for name in request:
        if name not in allowed:
            raise _invalid(f"{name}: Extra inputs are not permitted")
    max_tokens = _integer(request["max_tokens"], "max_tokens", minimum=0)  # 0 warms the cache
    model = _string(request["model"], "model")
    turns = _messages(request["messages"], version, model)
    system = _system(request.get("system", ""), version)
    stop_sequences = [
        _string(item, f"stop_sequences.{index}")
        for index, item in enumerate(_list(request.get("stop_sequences", []), "stop_sequences"))
    ]
    stream = _boolean(request.get("stream", False), "stream")
    if version == LEGACY_VERSION:
        _check_sampling(request, model)
    tools, tool_names = _tools(request.get("tools", []))
    tool_choice = {"type": "auto"}
    if "tool_choice" in request:
        tool_choice = _tool_choice(request["tool_choice"], tool_names)
    thinking = False
    if "thinking" in request:
        thinking = _thinking(request["thinking"], max_tokens)
        if thinking and tool_choice["type"] in ("any", "tool"):
            raise _invalid("Thinking may not be enabled when tool_choice forces tool use.")
    _small_fields(request)
    words = sum(_word_count(block) for block in system) + sum(
        _word_count(block) for turn in turns for _, _, block in turn.blocks
    )
    return ParsedRequest(
        model=model,
        max_tokens=max_tokens,
        stream=stream,
        stop_sequences=stop_sequences,
        tools=tools,
        tool_choice=tool_choice,
        thinking=thinking,
        turns=turns,
        prompt_words=words,
    )


def _word_count(block: dict[str, Any]) -> int:
    """Input "tokens": words of the text a block carries (text, tool results, search results)."""
    kind = block.get("type")
    if kind == "text":
        return len(str(block.get("text", "")).split())
    if kind in ("tool_result", "search_result"):
        content = block.get("content")
        if isinstance(content, str):
            return len(content.split())
        if isinstance(content, list):
            return sum(_word_count(item) for item in content if isinstance(item, dict))
    return 0


# --- Answers -----------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*\S+\s*")


@dataclasses.dataclass
class Answer:
    """The assistant message the fake produces for one request."""

    content: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def sample_value(name: str, schema: Any) -> Any:
    """A simple deterministic value for a JSON schema (required properties filled in)."""
    if not isinstance(schema, dict):
        return f"{name}-value"
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return sample_value(name, schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {key: sample_value(key, properties.get(key)) for key in required}
    if kind == "array":
        return (
            [sample_value(name, schema["items"])] if isinstance(schema.get("items"), dict) else []
        )
    return {
        "integer": 1,
        "number": 1.5,
        "boolean": True,
        "null": None,
    }.get(str(kind), f"{name}-value")


def _last_user_blocks(request: ParsedRequest) -> list[dict[str, Any]]:
    for turn in reversed(request.turns):
        if turn.role == "user":
            return [block for _, _, block in turn.blocks]
    return []


def _tool_result_texts(blocks: list[dict[str, Any]]) -> list[str]:
    texts: list[str] = []
    for block in blocks:
        if block.get("type") != "tool_result":
            continue
        content = block.get("content", "")
        if isinstance(content, list):
            content = " ".join(str(item.get("text", "")) for item in content if item.get("text"))
        texts.append(f"error: {content}" if block.get("is_error") else str(content))
    return texts


def _tool_calls(request: ParsedRequest, behaviour: Behaviour) -> list[dict[str, Any]]:
    choice = request.tool_choice
    kind = choice["type"]
    if not request.tools or kind == "none":
        return []
    forced = kind in ("any", "tool")
    if not forced and _tool_result_texts(_last_user_blocks(request)):
        return []  # the tool already answered: time for text
    if kind == "tool":
        chosen = [next(tool for tool in request.tools if tool["name"] == choice["name"])]
    else:
        chosen = [request.tools[0]]
    if behaviour.parallel_tool_calls and not choice.get("disable_parallel_tool_use", False):
        chosen.append(request.tools[1] if kind != "tool" and len(request.tools) > 1 else chosen[0])
    return [
        {
            "type": "tool_use",
            "id": _new_id("toolu_"),
            "name": tool["name"],
            "input": sample_value(tool["name"], tool["input_schema"]),
        }
        for tool in chosen
    ]


def _limit(text: str, stop_sequences: list[str], max_tokens: int) -> tuple[str, str, str | None]:
    """Cut generated text as the model would stop: stop sequence or max_tokens, first wins."""
    tokens = _TOKEN.findall(text)
    budget_chars = len("".join(tokens[:max_tokens]))
    found = [(text.find(seq), seq) for seq in stop_sequences if seq and seq in text]
    if found:
        start, sequence = min(found, key=lambda item: item[0])
        if start + len(sequence) <= budget_chars:  # generated completely within the budget
            return text[:start], "stop_sequence", sequence
    if len(tokens) > max_tokens:
        return "".join(tokens[:max_tokens]), "max_tokens", None
    return text, "end_turn", None


def build_answer(request: ParsedRequest, behaviour: Behaviour) -> Answer:
    """The deterministic answer: thinking (if asked), then tool calls or (cut) text."""
    if request.max_tokens == 0:  # the documented prompt-cache warm-up: nothing generated
        return Answer([], "max_tokens", None, 0)
    content: list[dict[str, Any]] = []
    used = 0
    if request.thinking and behaviour.thinking_text:
        content.append(
            {
                "type": "thinking",
                "thinking": behaviour.thinking_text,
                "signature": f"fake-signature-{uuid.uuid4().hex}",
            }
        )
        used += len(behaviour.thinking_text.split())
    calls = _tool_calls(request, behaviour)
    if calls:
        if behaviour.tool_preamble:
            content.append({"type": "text", "text": behaviour.tool_preamble})
            used += len(behaviour.tool_preamble.split())
        content.extend(calls)
        used += sum(max(1, len(orjson.dumps(call["input"])) // 4) for call in calls)
        return Answer(content, "tool_use", None, max(used, 1))
    results = _tool_result_texts(_last_user_blocks(request))
    text = f"Tool result received: {'; '.join(results)}" if results else behaviour.text
    budget = max(request.max_tokens - used, 0)
    text, stop_reason, stop_sequence = _limit(text, request.stop_sequences, budget)
    if text:
        content.append({"type": "text", "text": text})
    used += len(_TOKEN.findall(text))
    return Answer(content, stop_reason, stop_sequence, max(used, 1))


def _usage(request: ParsedRequest, answer: Answer, behaviour: Behaviour) -> dict[str, Any]:
    return {
        "input_tokens": request.prompt_words,
        "cache_creation_input_tokens": behaviour.cache_creation_input_tokens,
        "cache_read_input_tokens": behaviour.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": behaviour.cache_creation_input_tokens,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": answer.output_tokens,
        "service_tier": "standard",
    }


def message_body(
    message_id: str, request: ParsedRequest, answer: Answer, behaviour: Behaviour
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": answer.content,
        "stop_reason": answer.stop_reason,
        "stop_sequence": answer.stop_sequence,
        "stop_details": None,
        "usage": _usage(request, answer, behaviour),
    }


# --- Server-sent events ------------------------------------------------------------------


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _event(event: str, **fields: Any) -> tuple[str, bytes]:
    """An SSE event whose data is ``{"type": event, **fields}``, with its type."""
    return event, sse(event, {"type": event, **fields})


def _block_events(
    index: int, block: dict[str, Any], behaviour: Behaviour
) -> Iterator[tuple[str, bytes]]:
    kind = block["type"]
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [
            {"type": "text_delta", "text": piece}
            for piece in split_text(block["text"], behaviour.text_deltas)
        ]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [
            {"type": "thinking_delta", "thinking": piece}
            for piece in split_text(block["thinking"], behaviour.text_deltas)
        ]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:  # tool_use: the input arrives as JSON fragments, the first one empty as the API does
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        fragments = split_text(orjson.dumps(block["input"]).decode(), behaviour.json_deltas)
        deltas = [
            {"type": "input_json_delta", "partial_json": fragment} for fragment in ["", *fragments]
        ]
    yield _event("content_block_start", index=index, content_block=start)
    if index == 0:
        yield _event("ping")
    for delta in deltas:
        yield _event("content_block_delta", index=index, delta=delta)
    yield _event("content_block_stop", index=index)


def stream_events(
    message_id: str, request: ParsedRequest, answer: Answer, behaviour: Behaviour
) -> Iterator[tuple[str, bytes]]:
    """The documented event flow, as (event type, encoded SSE event) pairs."""
    usage = _usage(request, answer, behaviour)
    start = message_body(message_id, request, answer, behaviour)
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = {**usage, "output_tokens": min(answer.output_tokens, 1)}
    yield _event("message_start", message=start)
    if not answer.content:
        yield _event("ping")
    for index, block in enumerate(answer.content):
        yield from _block_events(index, block, behaviour)
    # Usage on message_delta is cumulative (the SDK overwrites rather than adds).
    totals = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    delta_usage = {key: usage[key] for key in (*totals, "output_tokens")}
    delta = {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence}
    yield _event("message_delta", delta=delta, usage=delta_usage)
    yield _event("message_stop")


# --- The ASGI application ----------------------------------------------------------------

_MODE_ERRORS: dict[str, tuple[int, str, str]] = {
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "rate_limited": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per "
        "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
    ),
    "server_error": (500, "api_error", "Internal server error"),
}


def error_body(kind: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def _authenticate(headers: Mapping[str, str], api_key: str) -> None:
    # The API takes the key as x-api-key (curl, older SDKs) or as a bearer token (SDK >= 2).
    key = headers.get("x-api-key")
    if key is not None:
        if key != api_key:
            raise ApiError(401, "authentication_error", "invalid x-api-key")
        return
    authorization = headers.get("authorization")
    if authorization is None:
        raise ApiError(401, "authentication_error", "x-api-key header is required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or token.strip() != api_key:
        raise ApiError(401, "authentication_error", "Invalid bearer token")


def _version(headers: Mapping[str, str]) -> str:
    version = headers.get("anthropic-version")
    if version is None:
        raise _invalid("anthropic-version: header is required")
    if version not in VERSIONS:
        raise _invalid(f'anthropic-version: "{version}" is not a valid version')
    return version


class FakeAnthropicApp(FakeApp):
    """The raw ASGI application: one route, ``POST /v1/messages``."""

    def __init__(self, api_key: str, behaviour: Behaviour, recorder: Recorder) -> None:
        super().__init__()
        self.api_key = api_key
        self.behaviour = behaviour
        self.recorder = recorder

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen, _, gone = await read_request(scope, receive, self.recorder)
        if gone:
            seen.client_gone = True
            return
        if await wait_or_gone(receive, seen, self.behaviour.latency_ms / 1000):
            return
        request_id = _new_id("req_")
        try:
            request = self._admit(scope, seen)
        except ApiError as error:
            await self._send_error(send, seen, error, request_id)
            return
        await self._answer(request, request_id, seen, send, receive)

    def _admit(self, scope: Scope, seen: Seen) -> ParsedRequest:
        if scope["path"] != MESSAGES_PATH or scope["method"] != "POST":
            raise ApiError(404, "not_found_error", "Not Found")
        headers = seen.headers
        _authenticate(headers, self.api_key)
        version = _version(headers)
        if not headers.get("content-type", "").lower().startswith("application/json"):
            raise _invalid("content-type: must be application/json")  # wording unverified
        if seen.json is None:
            raise _invalid("There was an error parsing the body as JSON")  # wording unverified
        request = parse_request(seen.json, version, beta="anthropic-beta" in headers)
        models = self.behaviour.models
        if models is not None and request.model not in models:
            raise ApiError(404, "not_found_error", f"model: {request.model}")
        return request

    async def _send_error(self, send: Send, seen: Seen, error: ApiError, request_id: str) -> None:
        retry = error.status in (408, 429) or error.status >= 500
        headers = [
            (b"request-id", request_id.encode()),
            (b"x-should-retry", b"true" if retry else b"false"),
        ]
        if error.status == 429:
            headers.append((b"retry-after", str(self.behaviour.retry_after_seconds).encode()))
        body = orjson.dumps(error_body(error.kind, error.message, request_id))
        await send_bytes(send, error.status, body, headers=headers)
        seen.completed = True

    async def _answer(
        self, request: ParsedRequest, request_id: str, seen: Seen, send: Send, receive: Receive
    ) -> None:
        behaviour = self.behaviour
        mode = behaviour.mode
        if mode not in MODES:  # a typo in a test must not pass for "ok"
            error = ApiError(500, "api_error", f"fake Anthropic: unknown mode {mode!r}")
            await self._send_error(send, seen, error, request_id)
            return
        if mode in _MODE_ERRORS or (mode == "stream_error" and not request.stream):
            # A non-streamed request has no stream to break: it gets the overload up front.
            status, kind, message = _MODE_ERRORS.get(mode, _MODE_ERRORS["overloaded"])
            await self._send_error(send, seen, ApiError(status, kind, message), request_id)
            return
        if mode == "invalid_request":
            error = _invalid(behaviour.error_message)
            await self._send_error(send, seen, error, request_id)
            return
        if mode == "hang":
            seen.client_gone = await self.hanging.hold(send, receive)
            return
        answer = build_answer(request, behaviour)
        message_id = _new_id("msg_")
        if request.stream:
            await self._stream(message_id, request, answer, request_id, seen, send, receive)
            return
        payload = orjson.dumps(message_body(message_id, request, answer, behaviour))
        headers = [(b"request-id", request_id.encode())]
        if mode == "cut":
            await send_half_then_drop(send, receive, payload, headers=headers)
            return
        await send_bytes(send, 200, payload, headers=headers)
        seen.completed = True

    async def _stream(
        self,
        message_id: str,
        request: ParsedRequest,
        answer: Answer,
        request_id: str,
        seen: Seen,
        send: Send,
        receive: Receive,
    ) -> None:
        behaviour = self.behaviour
        sender = StreamSender(send, receive, seen)
        try:
            headers = [(b"cache-control", b"no-cache"), (b"request-id", request_id.encode())]
            await sender.start(200, "text/event-stream; charset=utf-8", headers)
            await sleep_ms(behaviour.first_byte_delay_ms)
            first = True
            for event_type, event in stream_events(message_id, request, answer, behaviour):
                if not first:
                    await sleep_ms(behaviour.event_delay_ms)
                first = False
                if not await sender.chunk(event):
                    return
                if event_type != "content_block_delta" or behaviour.mode == "ok":
                    continue
                if behaviour.mode == "stream_error":  # as the API does when overloaded midway
                    overloaded = {"type": "overloaded_error", "message": "Overloaded"}
                    await sender.chunk(sse("error", {"type": "error", "error": overloaded}))
                    break
                if behaviour.mode == "cut":
                    await sender.close()  # stop watching: the drop itself disconnects
                    await drop_connection(send, receive)
                    return
            await sender.end()
        finally:
            await sender.close()


class FakeAnthropic(FakeServer[FakeAnthropicApp]):
    """The fake on its own thread and loopback port: ``with FakeAnthropic() as fake: ...``.

    ``base_url`` is what ``anthropic.Anthropic(base_url=...)`` takes (the root: the SDK adds
    ``/v1/messages``); ``v1_url`` is the root plus ``/v1``.
    """

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        behaviour: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.recorder = Recorder()
        app = FakeAnthropicApp(api_key, behaviour or Behaviour(), self.recorder)
        super().__init__(app, host=host, port=port)

    @property
    def api_key(self) -> str:
        return self.app.api_key

    @property
    def behaviour(self) -> Behaviour:
        return self.app.behaviour

    @property
    def base_url(self) -> str:
        return self.root_url

    @property
    def v1_url(self) -> str:
        return f"{self.root_url}/v1"

    def reset(self) -> None:
        """Default behaviour and an empty recorder (between tests sharing one server)."""
        self.app.behaviour = Behaviour()
        self.recorder.clear()
