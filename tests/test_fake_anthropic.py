"""The Anthropic Messages fake (local/fakes/anthropic.py), driven by the official anthropic SDK.

Everything goes over real HTTP on loopback. The SDK (2.x: ``anthropic-version: 2026-10-21``,
key as a bearer token) builds the requests and parses the answers, the SSE streams and the
errors with its own types; requests the SDK will not build (a missing ``max_tokens``, the
``x-api-key`` header with the 2023-06-01 version that Berry sends, malformed headers) go out
through httpx.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from anthropic.types import TextBlock, ThinkingBlock, ToolUseBlock

import support  # noqa: F401  (puts local/ on sys.path)
from dialect_support import TIME_SCHEMA, WEATHER_INPUT, WEATHER_SCHEMA, wait_for
from fakes.anthropic import (
    CURRENT_VERSION,
    LEGACY_VERSION,
    Behaviour,
    FakeAnthropic,
    sample_value,
)

MODEL = "claude-fake-test"  # unknown to the SDK's deprecation table and to the fake's rules
HELLO = [{"role": "user", "content": "say hello to me"}]  # 4 input "tokens"
DEFAULT_TEXT = Behaviour().text
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": WEATHER_SCHEMA,
}
TIME_TOOL: dict[str, Any] = {"name": "get_time", "input_schema": TIME_SCHEMA}


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG_B64 = base64.b64encode(_png_1x1()).decode()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    # One server for the module keeps the file fast; each test gets it reset.
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeAnthropic) -> FakeAnthropic:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.base_url, api_key=fake.api_key, max_retries=0) as sdk:
        yield sdk


def post(
    fake: FakeAnthropic,
    body: Any,
    *,
    version: str | None = LEGACY_VERSION,
    headers: dict[str, str] | None = None,
    path: str = "/v1/messages",
) -> httpx.Response:
    """A request as Berry sends it: x-api-key and an explicit anthropic-version."""
    sent = {"x-api-key": fake.api_key, "content-type": "application/json", **(headers or {})}
    if version is not None:
        sent["anthropic-version"] = version
    return httpx.post(f"{fake.root_url}{path}", content=json.dumps(body), headers=sent, timeout=10)


def request(**overrides: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 100, "messages": HELLO, **overrides}


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["type"] == "error"
    assert body["request_id"] == response.headers["request-id"]
    return response.status_code, body["error"]["type"], body["error"]["message"]


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in chunk.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


# --- Plain answers -----------------------------------------------------------------------


def test_text_answer_is_a_message_the_sdk_parses(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    message = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == MODEL
    assert len(message.content) == 1 and isinstance(message.content[0], TextBlock)
    assert message.content[0].text == DEFAULT_TEXT
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 4)
    assert message._request_id is not None and message._request_id.startswith("req_")
    seen = fake.recorder.last
    assert (seen.method, seen.path) == ("POST", "/v1/messages")
    assert seen.headers["anthropic-version"] == CURRENT_VERSION
    assert seen.headers["authorization"] == f"Bearer {fake.api_key}"
    assert seen.json == {"model": MODEL, "max_tokens": 100, "messages": HELLO}
    assert seen.wait_completed() and not seen.client_gone


def test_x_api_key_with_the_2023_version_is_accepted(fake: FakeAnthropic) -> None:
    response = post(fake, request())

    assert response.status_code == 200, response.text
    assert response.headers["request-id"].startswith("req_")
    body = response.json()
    assert body["content"] == [{"type": "text", "text": DEFAULT_TEXT}]
    assert "authorization" not in fake.recorder.last.headers


def test_system_prompt_as_string_and_as_blocks(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=100, system="You are terse.", messages=HELLO
    )
    assert fake.recorder.last.json["system"] == "You are terse."
    assert message.usage.input_tokens == 3 + 4

    blocks = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    client.messages.create(model=MODEL, max_tokens=100, system=blocks, messages=HELLO)
    assert fake.recorder.last.json["system"] == blocks


def test_multi_turn_conversations(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    turns: list[Any] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me more."},
        {"role": "user", "content": [{"type": "text", "text": "Please."}]},  # merged turns
    ]
    message = client.messages.create(model=MODEL, max_tokens=100, messages=turns)
    assert message.content[0].type == "text"
    assert message.usage.input_tokens == 1 + 1 + 3 + 1

    # The first-party API takes an assistant first turn, and a final assistant prefill.
    opening: list[Any] = [{"role": "assistant", "content": "How can I help?"}, *HELLO]
    client.messages.create(model=MODEL, max_tokens=100, messages=opening)
    client.messages.create(
        model=MODEL, max_tokens=100, messages=[*HELLO, {"role": "assistant", "content": "Sure"}]
    )
    with pytest.raises(anthropic.BadRequestError, match="cannot end with trailing whitespace"):
        client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=[*HELLO, {"role": "assistant", "content": "Sure "}],
        )


def test_images_from_base64_and_url(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    content: list[Any] = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "text", "text": "What are these?"},
    ]
    message = client.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": content}]
    )

    assert message.content[0].type == "text"
    assert fake.recorder.last.json["messages"][0]["content"] == content


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG_B64},
            },
            "messages.0.content.0.image.source.base64.data: Image does not match the provided "
            "media type image/jpeg",
        ),
        (
            {
                "type": "image",
                "source": {
                    "type": "base64",
                    "media_type": "image/png",
                    "data": f"data:image/png;base64,{PNG_B64}",
                },
            },
            "messages.0.content.0.image.source.base64.data: invalid base64 data",
        ),
        (
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/bmp", "data": "Qk0="},
            },
            "messages.0.content.0.image.source.base64.media_type: Input should be 'image/jpeg', "
            "'image/png', 'image/gif' or 'image/webp'",
        ),
        (
            {"type": "image", "source": {"type": "url", "url": f"data:image/png;base64,{PNG_B64}"}},
            "messages.0.content.0.image.source.url.url: Unable to download the file.",
        ),
        (  # OpenAI's shape
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            "messages.0.content.0: Input tag 'image_url' found using 'type' does not match any "
            "of the expected tags: 'text', 'image',",
        ),
    ],
    ids=["media-type-mismatch", "data-url-prefix", "bmp", "data-url-as-url", "openai-image-url"],
)
def test_bad_images_are_rejected(fake: FakeAnthropic, image: dict[str, Any], expected: str) -> None:
    response = post(fake, request(messages=[{"role": "user", "content": [image]}]))

    status, kind, message = error_of(response)
    assert (status, kind) == (400, "invalid_request_error")
    assert message.startswith(expected)


def test_stop_sequences_cut_before_the_sequence(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=100, messages=HELLO, stop_sequences=["never", "fake"]
    )

    assert message.content[0].type == "text" and message.content[0].text == "Hello from "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "fake")
    assert message.usage.output_tokens == 2


def test_max_tokens_cuts_the_text(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=2, messages=HELLO)
    assert message.content[0].type == "text" and message.content[0].text == "Hello from "
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 2)

    # A stop sequence past the budget is never generated: max_tokens wins.
    late = client.messages.create(
        model=MODEL, max_tokens=2, messages=HELLO, stop_sequences=["Anthropic"]
    )
    assert (late.stop_reason, late.stop_sequence) == ("max_tokens", None)

    # max_tokens=0 only warms the prompt cache.
    warm = client.messages.create(model=MODEL, max_tokens=0, messages=HELLO)
    assert (warm.content, warm.stop_reason, warm.usage.output_tokens) == ([], "max_tokens", 0)


def test_usage_reports_cache_tokens(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.behaviour.cache_read_input_tokens = 7
    fake.behaviour.cache_creation_input_tokens = 3

    usage = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO).usage
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (7, 3)
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 3

    with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        streamed = stream.get_final_message().usage
    assert (streamed.cache_read_input_tokens, streamed.cache_creation_input_tokens) == (7, 3)
    assert (streamed.input_tokens, streamed.output_tokens) == (4, 4)


# --- Tools -------------------------------------------------------------------------------


def test_tool_use_round_trip(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    question: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.create(
        model=MODEL, max_tokens=100, messages=question, tools=[WEATHER_TOOL]
    )

    assert first.stop_reason == "tool_use"
    [call] = first.content
    assert isinstance(call, ToolUseBlock)
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert call.input == WEATHER_INPUT

    result = {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}
    second = client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            *question,
            {"role": "assistant", "content": first.content},  # the SDK's blocks sent back
            {"role": "user", "content": [result, {"type": "text", "text": "Thanks"}]},
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and "Sunny, 21 C" in second.content[0].text
    assert fake.recorder.last.json["messages"][1]["content"][0]["id"] == call.id


def test_tool_choice_and_parallel_calls(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    tools: list[Any] = [WEATHER_TOOL, TIME_TOOL]

    def names(**options: Any) -> list[str]:
        message = client.messages.create(
            model=MODEL, max_tokens=100, messages=HELLO, tools=tools, **options
        )
        return [block.name if block.type == "tool_use" else block.type for block in message.content]

    assert names() == ["get_weather"]
    assert names(tool_choice={"type": "tool", "name": "get_time"}) == ["get_time"]
    assert names(tool_choice={"type": "none"}) == ["text"]
    fake.behaviour.parallel_tool_calls = True
    assert names() == ["get_weather", "get_time"]
    assert names(tool_choice={"type": "any", "disable_parallel_tool_use": True}) == ["get_weather"]
    fake.behaviour.tool_preamble = "Let me check."
    assert names(tool_choice={"type": "auto", "disable_parallel_tool_use": True}) == [
        "text",
        "get_weather",
    ]


def test_sample_values_follow_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "count": {"type": "integer"},
            "ratio": {"type": "number"},
            "flag": {"type": "boolean"},
            "mode": {"enum": ["fast", "slow"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "label": {"type": ["string", "null"]}},
                "required": ["lat", "label"],
            },
            "optional": {"type": "string"},
        },
        "required": ["name", "count", "ratio", "flag", "mode", "tags", "where"],
    }

    assert sample_value("tool", schema) == {
        "name": "name-value",
        "count": 1,
        "ratio": 1.5,
        "flag": True,
        "mode": "fast",
        "tags": ["tags-value"],
        "where": {"lat": 1.5, "label": "label-value"},
    }


# --- Streaming ---------------------------------------------------------------------------


def test_stream_text_matches_the_plain_answer(client: anthropic.Anthropic) -> None:
    plain = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()

    assert len(pieces) > 1 and "".join(pieces) == DEFAULT_TEXT
    assert final.content[0].type == "text" and final.content[0].text == DEFAULT_TEXT
    assert (final.stop_reason, final.stop_sequence) == ("end_turn", None)
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.usage.output_tokens == plain.usage.output_tokens


def test_raw_stream_follows_the_documented_event_flow(fake: FakeAnthropic) -> None:
    response = post(fake, request(stream=True))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    types = [name for name, _ in events]
    deltas = types.count("content_block_delta")
    assert types == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas == Behaviour().text_deltas
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert (start["content"], start["stop_reason"], start["usage"]["input_tokens"]) == ([], None, 4)
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == DEFAULT_TEXT
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"]["output_tokens"] == 4


def test_streamed_tool_use_input_arrives_in_json_fragments(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=100, messages=HELLO, tools=[WEATHER_TOOL]
    ) as stream:
        final = stream.get_final_message()

    assert final.stop_reason == "tool_use"
    [call] = final.content
    assert isinstance(call, ToolUseBlock) and call.input == WEATHER_INPUT

    events = sse_events(post(fake, request(stream=True, tools=[WEATHER_TOOL])).text)
    start = next(data for name, data in events if name == "content_block_start")
    assert start["content_block"]["input"] == {}
    fragments = [
        data["delta"]["partial_json"] for name, data in events if name == "content_block_delta"
    ]
    assert fragments[0] == "" and len(fragments) > 2
    assert json.loads("".join(fragments)) == WEATHER_INPUT


def test_streamed_stop_reasons(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=2, messages=HELLO) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "Hello from "
    assert (final.stop_reason, final.usage.output_tokens) == ("max_tokens", 2)

    with client.messages.stream(
        model=MODEL, max_tokens=100, messages=HELLO, stop_sequences=["Anthropic"]
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "Anthropic")


def test_thinking_blocks_come_first(client: anthropic.Anthropic) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    message = client.messages.create(
        model=MODEL, max_tokens=2048, messages=HELLO, thinking=thinking
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert isinstance(message.content[0], ThinkingBlock)
    assert message.content[0].thinking == Behaviour().thinking_text
    assert message.content[0].signature

    with client.messages.stream(
        model=MODEL, max_tokens=2048, messages=HELLO, thinking=thinking
    ) as stream:
        final = stream.get_final_message()
    assert isinstance(final.content[0], ThinkingBlock)
    assert final.content[0].thinking == Behaviour().thinking_text and final.content[0].signature


async def test_async_client(fake: FakeAnthropic) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=fake.base_url, api_key=fake.api_key, max_retries=0
    ) as sdk:
        message = await sdk.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
        async with sdk.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
            text = "".join([piece async for piece in stream.text_stream])

    assert message.content[0].type == "text" and message.content[0].text == DEFAULT_TEXT
    assert text == DEFAULT_TEXT


# --- Errors the real API gives -----------------------------------------------------------


def test_wrong_keys_are_authentication_errors(fake: FakeAnthropic) -> None:
    wrong_key = anthropic.Anthropic(base_url=fake.base_url, api_key="sk-wrong", max_retries=0)
    with wrong_key, pytest.raises(anthropic.AuthenticationError) as caught:
        wrong_key.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert caught.value.status_code == 401
    assert (caught.value.type, caught.value.api_message) == (
        "authentication_error",
        "Invalid bearer token",
    )

    wrong = post(fake, request(), headers={"x-api-key": "sk-wrong"})
    assert error_of(wrong) == (401, "authentication_error", "invalid x-api-key")
    missing = httpx.post(
        f"{fake.root_url}/v1/messages",
        json=request(),
        headers={"anthropic-version": LEGACY_VERSION},
    )
    assert error_of(missing) == (401, "authentication_error", "x-api-key header is required")
    assert "sk-wrong" not in wrong.text


@pytest.mark.parametrize(
    "field",
    [
        {"n": 1},
        {"frequency_penalty": 0.5},
        {"response_format": {"type": "json_object"}},
        {"stream_options": {"include_usage": True}},
        {"max_completion_tokens": 10},
        {"user": "someone"},
        {"temperature": 0.5},  # gone from the 2026-10-21 version the SDK sends
    ],
    ids=lambda field: next(iter(field)),
)
def test_unknown_top_level_fields_are_rejected(
    client: anthropic.Anthropic, field: dict[str, Any]
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_body=field)

    assert caught.value.status_code == 400 and caught.value.type == "invalid_request_error"
    assert caught.value.api_message == f"{next(iter(field))}: Extra inputs are not permitted"


def test_sampling_parameters_depend_on_version_and_model(fake: FakeAnthropic) -> None:
    assert post(fake, request(temperature=0.5, top_k=5)).status_code == 200
    assert error_of(post(fake, request(temperature=1.5)))[2] == (
        "temperature: Input should be less than or equal to 1"
    )
    both = request(model="claude-sonnet-4-5", temperature=0.5, top_p=0.9)
    assert error_of(post(fake, both))[2] == (
        "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
    )
    assert post(fake, request(model="claude-sonnet-4-5", temperature=0.5)).status_code == 200
    assert error_of(post(fake, request(model="claude-opus-4-7", temperature=1.0)))[2] == (
        "`temperature` is deprecated for this model."
    )
    current = post(fake, request(temperature=0.5), version=CURRENT_VERSION)
    assert error_of(current)[2] == "temperature: Extra inputs are not permitted"


def test_roles_and_system_messages(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    tool_role = request(messages=[*HELLO, {"role": "tool", "content": "42"}])
    assert error_of(post(fake, tool_role)) == (
        400,
        "invalid_request_error",
        "messages.1.role: Input should be 'user', 'assistant' or 'system'",
    )

    leading: list[Any] = [{"role": "system", "content": "Be terse."}, *HELLO]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=leading)
    assert caught.value.api_message == "role 'system' is not supported on this model"

    # Opus 4.8 and later take a system message, but only right after a user turn.
    with pytest.raises(anthropic.BadRequestError, match="must immediately follow a `user`"):
        client.messages.create(model="claude-opus-4-8", max_tokens=100, messages=leading)
    later: list[Any] = [*HELLO, {"role": "system", "content": "Now answer in French."}]
    message = client.messages.create(model="claude-opus-4-8", max_tokens=100, messages=later)
    assert message.stop_reason == "end_turn"


def test_tool_use_and_tool_result_must_pair(fake: FakeAnthropic) -> None:
    orphan = {"type": "tool_result", "tool_use_id": "toolu_orphan", "content": "42"}
    response = post(fake, request(messages=[{"role": "user", "content": [orphan]}]))
    assert error_of(response)[2] == (
        "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
        "toolu_orphan. Each `tool_result` block must have a corresponding `tool_use` block in "
        "the previous message."
    )

    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    unanswered = [*HELLO, {"role": "assistant", "content": [call]}, *HELLO]
    expected = (
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: "
        "toolu_1. Each `tool_use` block must have a corresponding `tool_result` block in the "
        "next message."
    )
    assert error_of(post(fake, request(messages=unanswered)))[2] == expected
    # tool_result blocks must come first in the user turn that answers.
    late_result = [
        *HELLO,
        {"role": "assistant", "content": [call]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here:"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"},
            ],
        },
    ]
    assert error_of(post(fake, request(messages=late_result)))[2] == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": MODEL, "messages": HELLO}, "max_tokens: Field required"),
        ({"max_tokens": 10, "messages": HELLO}, "model: Field required"),
        (request(max_tokens=-1), "max_tokens: Input should be greater than or equal to 0"),
        (request(messages=[]), "messages: at least one message is required"),
        (
            request(messages=[{"role": "user", "content": ""}]),
            "messages.0: all messages must have non-empty content except for the optional "
            "final assistant message",
        ),
        (
            request(messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}]),
            "messages: text content blocks must be non-empty",
        ),
        (
            request(messages=[{"role": "user", "content": "  \n"}]),
            "messages: text content blocks must contain non-whitespace text",
        ),
        (
            request(
                messages=[{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}]
            ),
            "messages.0.content.0.text.x: Extra inputs are not permitted",
        ),
        (
            request(messages=[{"role": "user", "content": "Hi", "name": "bob"}]),
            "messages.0.name: Extra inputs are not permitted",
        ),
        (
            request(
                tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            ),
            "tools.0: Input tag 'function' found using 'type' does not match any of the "
            "expected tags: 'custom', 'bash_20250124',",
        ),
        (
            request(tools=[{**WEATHER_TOOL, "name": "weather.get"}]),
            "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,128}$'",
        ),
        (
            request(tools=[{"name": "f", "input_schema": {"properties": {}}}]),
            "tools.0.custom.input_schema.type: Field required",
        ),
        (request(tools=[WEATHER_TOOL, WEATHER_TOOL]), "tools: Tool names must be unique."),
        (request(tool_choice="auto"), "tool_choice: Input should be a valid dictionary"),
        (
            request(tools=[WEATHER_TOOL], tool_choice={"type": "required"}),
            "tool_choice: Input tag 'required' found using 'type' does not match any of the "
            "expected tags: 'auto', 'any', 'tool', 'none'",
        ),
        (
            request(metadata={"user_id": "u", "tier": 1}),
            "metadata.tier: Extra inputs are not permitted",
        ),
        (
            request(max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 100}),
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ),
        (
            request(
                max_tokens=2048,
                thinking={"type": "enabled", "budget_tokens": 1024},
                tools=[WEATHER_TOOL],
                tool_choice={"type": "any"},
            ),
            "Thinking may not be enabled when tool_choice forces tool use.",
        ),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else None,
)
def test_malformed_requests_are_rejected(
    fake: FakeAnthropic, body: dict[str, Any], expected: str
) -> None:
    status, kind, message = error_of(post(fake, body))

    assert (status, kind) == (400, "invalid_request_error")
    assert message.startswith(expected)


def test_2026_version_rules_on_content(fake: FakeAnthropic) -> None:
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "Some notes."},
    }
    turns = [*HELLO, {"role": "assistant", "content": [document]}, *HELLO]
    assert post(fake, request(messages=turns)).status_code == 200
    assert (
        "document blocks are not allowed"
        in error_of(post(fake, request(messages=turns), version=CURRENT_VERSION))[2]
    )

    cited = {"type": "text", "text": "See this.", "citations": [{"type": "char_location"}]}
    user = [{"role": "user", "content": [cited]}]
    assert post(fake, request(messages=user)).status_code == 200
    assert error_of(post(fake, request(messages=user), version=CURRENT_VERSION))[0] == 400


def test_headers_paths_and_models(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    assert error_of(post(fake, request(), version=None)) == (
        400,
        "invalid_request_error",
        "anthropic-version: header is required",
    )
    assert error_of(post(fake, request(), version="2024-10-22"))[2] == (
        'anthropic-version: "2024-10-22" is not a valid version'
    )
    for path in ("/messages", "/v1/chat/completions", "/v1/messages/"):
        assert error_of(post(fake, request(), path=path)) == (404, "not_found_error", "Not Found")

    fake.behaviour.models = ["claude-opus-4-8"]
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert caught.value.api_message == f"model: {MODEL}"


# --- Failure modes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "error_class", "status", "kind"),
    [
        ("overloaded", anthropic.OverloadedError, 529, "overloaded_error"),
        ("rate_limited", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("server_error", anthropic.InternalServerError, 500, "api_error"),
        ("invalid_request", anthropic.BadRequestError, 400, "invalid_request_error"),
    ],
)
def test_failure_modes_map_to_the_sdk_exceptions(
    fake: FakeAnthropic,
    client: anthropic.Anthropic,
    mode: str,
    error_class: type[anthropic.APIStatusError],
    status: int,
    kind: str,
) -> None:
    fake.behaviour.mode = mode
    with pytest.raises(error_class) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)

    error = caught.value
    assert (error.status_code, error.type) == (status, kind)
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert isinstance(error.body, dict) and error.body["request_id"] == error.request_id
    if mode == "rate_limited":
        assert error.response.headers["retry-after"] == str(Behaviour().retry_after_seconds)
    if mode == "invalid_request":
        assert error.api_message == Behaviour().error_message


def test_mid_stream_error_event(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.behaviour.mode = "stream_error"
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,  # the stream itself was a 200
        client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream,
    ):
        received.extend(stream.text_stream)

    assert received and DEFAULT_TEXT.startswith("".join(received))
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    # A request that did not ask for a stream gets the overload up front.
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)


def test_cut_connections(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.behaviour.mode = "cut"
    received: list[str] = []
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream,
    ):
        received.extend(stream.text_stream)
    assert received and "".join(received) != DEFAULT_TEXT

    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert not fake.recorder.last.completed


def test_hang_until_the_client_gives_up(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.behaviour.mode = "hang"
    with pytest.raises(anthropic.APITimeoutError):
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, timeout=0.3)

    assert wait_for(lambda: fake.recorder.last.client_gone)
    assert not fake.recorder.last.completed

    fake.behaviour.mode = "ok"
    fake.behaviour.latency_ms = 10_000
    with pytest.raises(anthropic.APITimeoutError):
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, timeout=0.3)
    assert wait_for(lambda: fake.recorder.last.client_gone)


def test_stop_releases_hanging_requests() -> None:
    outcome: list[BaseException] = []
    with FakeAnthropic(behaviour=Behaviour(mode="hang")) as fake:
        sdk = anthropic.Anthropic(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)

        def call() -> None:
            try:
                sdk.messages.create(model=MODEL, max_tokens=100, messages=HELLO, timeout=60)
            except anthropic.APIError as error:
                outcome.append(error)

        caller = threading.Thread(target=call)
        caller.start()
        assert wait_for(lambda: len(fake.recorder.requests) == 1)
    caller.join(30)

    assert not caller.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], anthropic.APIConnectionError)
    assert not isinstance(outcome[0], anthropic.APITimeoutError)
