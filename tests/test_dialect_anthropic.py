"""The ``claude`` dialect: OpenAI chat completions in, Anthropic's Messages API out, and back.

Three layers: the pure translation functions (no servers); random valid OpenAI bodies
(hypothesis) translated and sent to the strict FakeAnthropic, which must accept every one;
and Berry end to end with the official ``openai`` SDK as the client and the fake as the
upstream, over real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from berry_shared.backend_state import ErrorClass
from berry_shared.chat_request import ChatRequest, parse_chat_request
from berry_shared.config import Config, Provider
from berry_shared.dialects.anthropic import API_VERSION, AnthropicDialect
from berry_shared.dialects.anthropic_request import (
    DEFAULT_MAX_TOKENS,
    messages_request,
    takes_sampling,
)
from berry_shared.dialects.anthropic_response import openai_completion
from berry_shared.dialects.anthropic_stream import AnthropicStream
from berry_shared.dialects.base import AttemptFailed, ClientMistake, StreamBroken, Unsupported
from berry_shared.gateway import Gateway
from dialect_support import (
    HELLO,
    HTTP,
    PUBLIC,
    TIME,
    WEATHER,
    WEATHER_ARGS,
    berry_client,
    chat_request,
    demo_provider,
    one_model_config,
)
from support import ADMIN_TOKEN, USER_TOKEN, Berry, DemoUpstream, provider_key

# isort: split
# support put local/ on sys.path
from fakes.anthropic import Behaviour, FakeAnthropic, sse
from openai_bodies import PNG_DATA_URL, chat_bodies

MODEL = "claude-sonnet-4-5"  # the upstream model: 4.5 takes temperature (not with top_p)
KEY = provider_key("claude")
BETA = "prompt-caching-2024-07-31"
TEXT = Behaviour().text  # "Hello from fake Anthropic"


def translate(body: dict[str, Any], model: str = MODEL) -> dict[str, Any]:
    chat = chat_request(body)
    return messages_request(chat.body, model, chat.stream)


def provider(base_url: str = "https://api.anthropic.com", **extra: Any) -> Provider:
    fields: dict[str, Any] = {
        "name": "Claude",
        "base_url": base_url,
        "api_key": KEY,
        "models": [MODEL],
        "backend_type": "claude",
        **extra,
    }
    return Provider.model_validate(fields)


def dialect(**extra: Any) -> AnthropicDialect:
    return AnthropicDialect("claude", provider(**extra))


# --- Requests ------------------------------------------------------------------------------


def test_system_and_developer_messages_become_system_blocks() -> None:
    request = translate(
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                {"role": "user", "content": "hi"},
            ]
        }
    )
    assert request == {
        "model": MODEL,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "system": [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Use metric."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_images_become_base64_and_url_sources() -> None:
    request = translate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What are these?"},
                        {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                }
            ]
        }
    )
    png = PNG_DATA_URL.partition(",")[2]
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "What are these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}, "content[0]"),
        ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, "content[0]"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "content[0]"),
        ({"type": "file", "file": {"file_id": "file-123"}}, "content[0]"),
    ],
    ids=["bmp", "ftp", "audio", "file-id"],
)
def test_parts_claude_cannot_take_are_unsupported(part: dict[str, Any], param: str) -> None:
    with pytest.raises(Unsupported) as caught:
        translate({"messages": [{"role": "user", "content": [part]}]})
    assert caught.value.param is not None and caught.value.param.endswith(param)


def test_pdf_files_become_documents() -> None:
    part = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "x": 1}}
    request = translate({"messages": [{"role": "user", "content": [part]}]})
    assert request["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        }
    ]


def test_tool_calls_and_results_round_trip_into_blocks() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call:2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "Weather and time in Paris?"},
                {"role": "assistant", "content": "Let me look.", "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
                {
                    "role": "tool",
                    "tool_call_id": "call:2",
                    "content": [{"type": "text", "text": "9:00"}],
                },
                {"role": "user", "content": "Thanks!"},
            ],
            "tools": [WEATHER, TIME],
        }
    )
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                # Ids outside Anthropic's pattern are rewritten the same way in both places.
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",  # consecutive tool results and the user's words: one user turn
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "21 C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "9:00"}],
                },
                {"type": "text", "text": "Thanks!"},
            ],
        },
    ]
    assert request["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER["function"]["parameters"],
            "description": "Current weather in a city",
        },
        {"name": "get_time", "input_schema": TIME["function"]["parameters"]},
    ]


def test_tool_arguments_that_are_not_an_object_are_unsupported() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "[1, 2"}}
    with pytest.raises(Unsupported, match="must be a JSON object"):
        translate({"messages": [*HELLO, {"role": "assistant", "tool_calls": [call]}]})


def test_same_role_turns_merge_and_empty_text_is_left_out() -> None:
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "user", "content": [{"type": "text", "text": "two"}]},
                {"role": "assistant", "content": ""},  # nothing to send: left out
                {"role": "user", "content": "   "},
                {"role": "assistant", "content": "Sure thing  \n"},  # a prefill
            ]
        }
    )
    assert request["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Sure thing"}]},
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 60, "max_tokens": 50}, 60),
        ({"max_tokens": None}, DEFAULT_MAX_TOKENS),
        ({}, DEFAULT_MAX_TOKENS),
    ],
)
def test_max_tokens(fields: dict[str, Any], expected: int) -> None:
    assert translate({"messages": HELLO, **fields})["max_tokens"] == expected


def test_sampling_parameters_follow_the_model() -> None:
    both = {"messages": HELLO, "temperature": 1.7, "top_p": 0.5, "seed": 3}
    assert {k: v for k, v in translate(both).items() if k in ("temperature", "top_p")} == {
        "temperature": 1.0  # clamped to Anthropic's range; top_p dropped beside it
    }
    assert translate({"messages": HELLO, "top_p": 0.5})["top_p"] == 0.5
    assert translate({"messages": HELLO, "temperature": -1})["temperature"] == 0
    for model in ("claude-opus-4-7", "claude-opus-4-8-20270101", "claude-mythos-preview"):
        request = translate({**both, "top_k": 5}, model)
        assert not {"temperature", "top_p", "top_k"} & request.keys(), model
    assert takes_sampling("claude-3-5-sonnet-20241022")
    assert takes_sampling("claude-opus-4-20250514")
    assert takes_sampling("claude-haiku-4-5@20251001")
    assert not takes_sampling("anthropic.claude-opus-4-7-v1:0")


def test_openai_only_fields_are_dropped_and_the_rest_mapped() -> None:
    request = translate(
        {
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop": "END",
            "user": "user-42",
            "n": 1,
            "frequency_penalty": 0.5,
            "presence_penalty": 0.5,
            "logprobs": False,
            "logit_bias": {"1": 2},
            "seed": 7,
            "service_tier": "auto",
            "store": False,
            "metadata": {"a": "b"},
            "reasoning_effort": "low",
            "response_format": {"type": "json_object"},
            "parallel_tool_calls": False,  # without tools: nothing to say
        }
    )
    assert request == {
        "model": MODEL,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "say hello to me"}]}],
        "stream": True,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
    }
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    structured = translate(
        {
            "messages": HELLO,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema},
            },
        }
    )
    assert structured["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_stop_sequences() -> None:
    assert translate({"messages": HELLO, "stop": ["a", "", "b c"]})["stop_sequences"] == [
        "a",
        "b c",
    ]
    with pytest.raises(Unsupported, match="whitespace"):
        translate({"messages": HELLO, "stop": ["\n"]})


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", False, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, True, None),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"messages": HELLO, "tools": [WEATHER]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert translate(body).get("tool_choice") == expected


def test_n_above_one_is_unsupported() -> None:
    with pytest.raises(Unsupported) as caught:
        translate({"messages": HELLO, "n": 2})
    assert caught.value.param == "n" and "one choice" in caught.value.message


# --- The dialect: URL, headers, error classes ----------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "url"),
    [
        ("https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com/", "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com/v1", "https://api.anthropic.com/v1/messages"),
        ("https://proxy.example/anthropic/v1/", "https://proxy.example/anthropic/v1/messages"),
        ("https://proxy.example/anthropic", "https://proxy.example/anthropic/v1/messages"),
    ],
)
def test_url_with_or_without_v1(base_url: str, url: str) -> None:
    assert dialect(base_url=base_url).messages_url == url


def test_headers() -> None:
    request = dialect(headers={"anthropic-beta": BETA}).chat_request(
        ChatRequest({"model": PUBLIC, "messages": HELLO}, PUBLIC, False), MODEL
    )
    assert request.method == "POST" and request.read_timeout == 30
    assert dict(request.headers) == {
        "x-api-key": KEY,
        "anthropic-version": API_VERSION,
        "anthropic-beta": BETA,
        "content-type": "application/json",
    }
    replaced = dialect(headers={"Anthropic-Version": "2026-10-21"}).headers
    assert replaced["anthropic-version"] == "2026-10-21" and "Anthropic-Version" not in replaced


def _error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


@pytest.mark.parametrize(
    ("status", "kind", "message", "expected"),
    [
        (529, "overloaded_error", "Overloaded", ErrorClass.SERVER),
        (500, "api_error", "Internal server error", ErrorClass.SERVER),
        (429, "rate_limit_error", "slow down", ErrorClass.RATE_LIMIT),
        (401, "authentication_error", "invalid x-api-key", ErrorClass.AUTH),
        (403, "permission_error", "no access", ErrorClass.AUTH),
        (400, "invalid_request_error", "Your credit balance is too low to access", ErrorClass.AUTH),
        (404, "not_found_error", "model: claude-nope", ErrorClass.MODEL),
        (400, "invalid_request_error", "messages: bad", 400),
        (404, "invalid_request_error", "no such file", 404),
        (413, "request_too_large", "Request exceeds the maximum size", 413),
    ],
)
def test_error_classes(status: int, kind: str, message: str, expected: Any) -> None:
    outcome = dialect().failure(status, {"retry-after": "7"}, _error(kind, message))
    if isinstance(expected, ErrorClass):
        assert isinstance(outcome, AttemptFailed) and outcome.error is expected
        assert outcome.retry_after == 7
    else:
        assert isinstance(outcome, ClientMistake) and outcome.status == expected
        assert orjson.loads(outcome.body)["error"]["message"] == message


def test_client_errors_never_carry_the_key() -> None:
    outcome = dialect(headers={"anthropic-beta": BETA}).failure(
        400, {}, _error("invalid_request_error", f"bad key {KEY} with {BETA}")
    )
    assert isinstance(outcome, ClientMistake)
    assert KEY.encode() not in outcome.body and BETA.encode() not in outcome.body
    assert orjson.loads(outcome.body)["error"]["type"] == "invalid_request_error"


def test_unknown_error_types_are_not_quoted() -> None:
    # Berry's own messages quote Anthropic's error type only when it is a documented one.
    outcome = dialect().failure(500, {}, _error(KEY, "x"))
    assert isinstance(outcome, AttemptFailed) and outcome.detail == "HTTP 500"
    with pytest.raises(StreamBroken) as caught:
        AnthropicStream(PUBLIC, False).feed(event("error", error={"type": KEY}))
    assert caught.value.error is ErrorClass.SERVER and KEY not in caught.value.detail


# --- Answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_whole_answer(stop_reason: str, finish_reason: str) -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Hello "},
            {"type": "text", "text": "there"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1]}},
        ],
        "stop_reason": stop_reason,
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 5,
            "cache_creation_input_tokens": 2,
            "output_tokens": 3,
        },
    }
    body, usage = openai_completion(message, PUBLIC)
    answer = orjson.loads(body)
    assert answer["object"] == "chat.completion" and answer["model"] == MODEL
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello there",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a":[1]}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": finish_reason,
        }
    ]
    assert answer["usage"] == {
        "prompt_tokens": 17,
        "completion_tokens": 3,
        "total_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 5},
    }
    assert usage is not None and usage.cached_tokens == 5


def test_a_body_that_is_not_a_message_fails_over() -> None:
    chat = ChatRequest({"model": PUBLIC, "messages": HELLO}, PUBLIC, False)
    for body, content_type in [
        (b"<html>", "text/html"),
        (b'{"type": "error", "error": {}}', "application/json"),
    ]:
        with pytest.raises(AttemptFailed):
            dialect().completion(body, content_type, chat)


# --- Streams -------------------------------------------------------------------------------


def event(kind: str, **fields: Any) -> bytes:
    return sse(kind, {"type": kind, **fields})


def text_stream(stop_reason: str = "end_turn", *texts: str) -> list[bytes]:
    usage = {"input_tokens": 9, "cache_read_input_tokens": 4, "output_tokens": 1}
    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "usage": usage}
    events = [
        event("message_start", message={**start, "content": [], "stop_reason": None}),
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        event("ping"),
    ]
    events += [
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": t})
        for t in texts
    ]
    events += [
        event("content_block_stop", index=0),
        event(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage={"output_tokens": 6},  # cumulative: replaces the 1 of message_start
        ),
        event("message_stop"),
    ]
    return events


def decode(decoder: AnthropicStream, events: list[bytes], size: int = 0) -> list[Any]:
    """Feed the events whole (size 0) or in pieces of ``size`` bytes; the chunks out."""
    raw = b"".join(events)
    pieces = [raw] if size == 0 else [raw[i : i + size] for i in range(0, len(raw), size)]
    out = b"".join(decoder.feed(piece) for piece in pieces) + decoder.finish()
    return [
        line.removeprefix(b"data: ").decode()
        if line.endswith(b"[DONE]")
        else orjson.loads(line.removeprefix(b"data: "))
        for line in out.split(b"\n\n")
        if line
    ]


@pytest.mark.parametrize("size", [0, 1, 5, 64])
@pytest.mark.parametrize("include_usage", [False, True])
def test_text_stream(size: int, include_usage: bool) -> None:
    decoder = AnthropicStream(PUBLIC, include_usage)
    chunks = decode(decoder, text_stream("max_tokens", "Hel", "lo"), size)
    assert chunks[-1] == "[DONE]"
    choices = [c["choices"][0] for c in chunks[:-1] if c["choices"]]
    assert [c["delta"] for c in choices] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert [c["finish_reason"] for c in choices] == [None, None, None, "length"]
    assert {c["model"] for c in chunks[:-1]} == {MODEL}
    assert len({c["id"] for c in chunks[:-1]}) == 1
    usage_chunks = [c for c in chunks[:-1] if not c["choices"]]
    expected = {
        "prompt_tokens": 13,
        "completion_tokens": 6,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert usage_chunks == ([chunks[-2]] if include_usage else [])
    if include_usage:
        assert chunks[-2]["usage"] == expected
    assert decoder.usage is not None and decoder.usage.openai() == expected


def test_tool_use_stream() -> None:
    blocks = [
        (0, {"type": "text", "text": ""}, [{"type": "text_delta", "text": "Checking."}]),
        (
            1,
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}},
            ['{"ci', 'ty": "Paris"}'],
        ),
        (2, {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}}, ["", "{}"]),
    ]
    events = [text_stream()[0]]
    for index, block, deltas in blocks:
        events.append(event("content_block_start", index=index, content_block=block))
        for delta in deltas:
            if isinstance(delta, str):
                delta = {"type": "input_json_delta", "partial_json": delta}
            events.append(event("content_block_delta", index=index, delta=delta))
        events.append(event("content_block_stop", index=index))
    events += [
        event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 9}),
        event("message_stop"),
    ]
    chunks = decode(AnthropicStream(PUBLIC, False), events, size=3)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Checking."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "toolu_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_error_before_any_content_fails_the_attempt() -> None:
    decoder = AnthropicStream(PUBLIC, False)
    overloaded = event("error", error={"type": "overloaded_error", "message": "Overloaded"})
    # message_start alone sends nothing, so the relay can still fail over.
    assert decoder.feed(text_stream()[0]) == b""
    with pytest.raises(StreamBroken) as caught:
        decoder.feed(overloaded)
    assert caught.value.error is ErrorClass.SERVER


def test_error_after_content_comes_after_that_content() -> None:
    decoder = AnthropicStream(PUBLIC, False)
    events = text_stream("end_turn", "Hi")[:4]
    rate_limited = event("error", error={"type": "rate_limit_error", "message": "slow"})
    out = decoder.feed(b"".join(events) + rate_limited)  # one read: content, then the error
    assert b'"content":"Hi"' in out
    with pytest.raises(StreamBroken) as caught:
        decoder.finish()
    assert caught.value.error is ErrorClass.RATE_LIMIT


def test_stream_without_message_stop_is_broken() -> None:
    decoder = AnthropicStream(PUBLIC, True)
    decoder.feed(b"".join(text_stream("end_turn", "Hi")[:-1]))
    with pytest.raises(StreamBroken):
        decoder.finish()
    assert decoder.completion_tokens_estimate == 1
    malformed = AnthropicStream(PUBLIC, False)
    with pytest.raises(StreamBroken):
        malformed.feed(b"event: message_start\ndata: {not json\n\n")


# --- Hypothesis: every valid OpenAI body becomes a request the strict fake accepts ---------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeAnthropic) -> FakeAnthropic:
    server.reset()
    return server


UPSTREAM_MODELS = st.sampled_from(
    ["claude-sonnet-4-5", "claude-opus-4-7", "claude-3-5-haiku-20241022", "claude-haiku-4-5"]
)


@settings(max_examples=150, deadline=None)
@given(body=chat_bodies(), model=UPSTREAM_MODELS)
def test_random_openai_bodies_are_accepted(
    server: FakeAnthropic, body: dict[str, Any], model: str
) -> None:
    chat = parse_chat_request(orjson.dumps(body))
    claude = AnthropicDialect("claude", provider(server.base_url))
    sent = orjson.dumps(chat.body)
    try:
        request = claude.chat_request(chat, model)
    except Unsupported as unsupported:
        # The one thing random bodies may hold that Claude refuses: a whitespace stop sequence.
        assert unsupported.param == "stop", unsupported.message
        return
    # The client's body is left as it was: a failover to an OpenAI backend sends it as is.
    assert orjson.dumps(chat.body) == sent
    response = HTTP.post(request.url, content=request.body, headers=dict(request.headers))
    assert response.status_code == 200, (response.text, orjson.loads(request.body))
    if chat.stream:
        decoder = claude.stream_decoder(chat)
        out = decoder.feed(response.content) + decoder.finish()
        assert out.endswith(b"data: [DONE]\n\n")
    else:
        answer = orjson.loads(claude.completion(response.content, "application/json", chat).body)
        assert answer["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


# --- End to end: Berry with the openai SDK ---------------------------------------------------


def claude_provider(fake: FakeAnthropic, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Claude",
        "base_url": fake.base_url,
        "api_key": KEY,
        "models": [MODEL],
        "backend_type": "claude",
        "headers": {"anthropic-beta": BETA},
        **extra,
    }


def config(providers: dict[str, dict[str, Any]]) -> Config:
    """One public model; the first backend has the best priority, so SmartAI tries the
    backends in the order given."""
    backends = [
        {
            "provider": pid,
            "model": MODEL if p.get("backend_type") == "claude" else "up-model",
            "priority": 0 if i == 0 else 1,
        }
        for i, (pid, p) in enumerate(providers.items())
    ]
    return one_model_config(providers, backends)


@pytest.fixture
def claude_berry(fake: FakeAnthropic, start_berry: Callable[[Config], Berry]) -> Berry:
    return start_berry(config({"claude": claude_provider(fake)}))


@pytest.fixture
def client(claude_berry: Berry) -> Iterator[openai.OpenAI]:
    with berry_client(claude_berry) as sdk:
        yield sdk


@pytest.mark.parametrize("root", [True, False], ids=["root-url", "v1-url"])
def test_chat_through_berry(
    fake: FakeAnthropic, start_berry: Callable[[Config], Berry], root: bool
) -> None:
    base_url = fake.base_url if root else fake.v1_url
    berry = start_berry(config({"claude": claude_provider(fake, base_url=base_url)}))
    with berry_client(berry) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=PUBLIC,
            messages=[{"role": "system", "content": "Be nice."}, *HELLO],
            temperature=1.5,
            seed=3,
        )
    completion = raw.parse()
    assert raw.headers["x-berry-backend"] == f"claude:{MODEL}"
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "stop", None)
    assert (choice.message.role, choice.message.content) == ("assistant", TEXT)
    assert choice.message.tool_calls is None
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2 + 4, 4)

    seen = fake.recorder.last
    assert (seen.method, seen.path) == ("POST", "/v1/messages")
    assert seen.headers["x-api-key"] == KEY and "authorization" not in seen.headers
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == BETA
    assert seen.json == {
        "model": MODEL,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "say hello to me"}]}],
        "system": [{"type": "text", "text": "Be nice."}],
        "temperature": 1.0,
    }


def stream_chunks(sdk: openai.OpenAI, **fields: Any) -> list[Any]:
    fields.setdefault("messages", HELLO)
    return list(sdk.chat.completions.create(model=PUBLIC, stream=True, **fields))


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_through_berry(
    fake: FakeAnthropic, client: openai.OpenAI, include_usage: bool
) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = stream_chunks(client, **options)

    assert fake.recorder.last.json["stream"] is True
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == TEXT
    finishes = [c for c in with_choices if c.choices[0].finish_reason is not None]
    assert finishes == [with_choices[-1]] and finishes[0].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    usage_chunks = [c for c in chunks if c.usage is not None]
    if not include_usage:
        assert usage_chunks == [] and len(chunks) == len(with_choices)
        return
    assert usage_chunks == [chunks[-1]] and chunks[-1].choices == []
    assert chunks.index(finishes[0]) == len(chunks) - 2  # the usage chunk right after
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 4, 8)


def test_tool_call_round_trip(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    question: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=PUBLIC, messages=question, tools=[WEATHER])

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    sent_tool = fake.recorder.last.json["tools"][0]
    assert sent_tool["name"] == "get_weather" and sent_tool["input_schema"]["required"]

    follow_up = [
        *question,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21 degrees"},
    ]
    second = client.chat.completions.create(model=PUBLIC, messages=follow_up, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool result received: 21 degrees"
    turns = fake.recorder.last.json["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": WEATHER_ARGS}
    ]
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "21 degrees"}
    ]


@pytest.mark.parametrize("parallel", [True, False])
def test_streamed_tool_calls(fake: FakeAnthropic, client: openai.OpenAI, parallel: bool) -> None:
    fake.behaviour.parallel_tool_calls = True  # two calls unless parallel calls are disabled
    fake.behaviour.tool_preamble = "Let me check."
    chunks = stream_chunks(
        client,
        messages=[{"role": "user", "content": "Weather and time?"}],
        tools=[WEATHER, TIME],
        parallel_tool_calls=parallel,
    )

    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += (delta.function.name if delta.function else None) or ""
            call["arguments"] += (delta.function.arguments if delta.function else None) or ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Let me check."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    expected = {0: ("get_weather", WEATHER_ARGS)}
    if parallel:
        expected[1] = ("get_time", {})
    assert {i: (c["name"], json.loads(c["arguments"])) for i, c in calls.items()} == expected
    assert all(c["id"].startswith("toolu_") for c in calls.values())
    sent_choice = fake.recorder.last.json.get("tool_choice")
    assert sent_choice == (
        None if parallel else {"type": "auto", "disable_parallel_tool_use": True}
    )


def test_images_reach_anthropic_as_sources(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    content = [
        {"type": "text", "text": "What are these?"},
        {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
        {
            "type": "image_url",
            "image_url": {"url": "https://example.com/cat.png", "detail": "high"},
        },
    ]
    completion = client.chat.completions.create(
        model=PUBLIC,
        messages=[{"role": "user", "content": content}],
    )
    assert completion.choices[0].message.content == TEXT
    blocks = fake.recorder.last.json["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": PNG_DATA_URL.partition(",")[2],
        },
    }
    assert blocks[2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/cat.png"},
    }


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_and_max_tokens(client: openai.OpenAI, stream: bool) -> None:
    def answer(**fields: Any) -> tuple[str, str | None]:
        if stream:
            chunks = [c for c in stream_chunks(client, **fields) if c.choices]
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            return text, chunks[-1].choices[0].finish_reason
        choice = client.chat.completions.create(model=PUBLIC, messages=HELLO, **fields).choices[0]
        return choice.message.content or "", choice.finish_reason

    assert answer(stop=["never", "fake"]) == ("Hello from ", "stop")
    assert answer(stop="Anthropic") == ("Hello from fake ", "stop")
    assert answer(max_tokens=2) == ("Hello from ", "length")
    assert answer(max_completion_tokens=3) == ("Hello from fake ", "length")


def test_n_above_one_is_a_clear_400(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=PUBLIC, messages=HELLO, n=2)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "n" and "one choice" in error["message"]
    assert fake.recorder.requests == []


@pytest.mark.parametrize(
    ("mode", "stream"),
    [("overloaded", False), ("overloaded", True), ("rate_limited", False), ("server_error", True)],
)
def test_provider_failures_fail_over(
    fake: FakeAnthropic,
    make_upstream: Callable[..., DemoUpstream],
    start_berry: Callable[[Config], Berry],
    mode: str,
    stream: bool,
) -> None:
    fake.behaviour.mode = mode
    demo = make_upstream(name="demo")
    berry = start_berry(config({"claude": claude_provider(fake), "demo": demo_provider(demo)}))
    body = {"model": PUBLIC, "messages": HELLO, "stream": stream}
    response = HTTP.post(
        f"{berry.base_url}/chat/completions",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-berry-backend"] == "demo:up-model"
    assert response.headers["x-berry-attempts"] == "2"
    assert len(fake.recorder.requests) == 1 and demo.stats()["requests"] == 1
    expected = ErrorClass.RATE_LIMIT if mode == "rate_limited" else ErrorClass.SERVER
    assert error_counts(berry) == {(f"claude:{MODEL}", expected.value): 1.0}


def test_overload_fails_over_to_another_claude(
    fake: FakeAnthropic, start_berry: Callable[[Config], Berry]
) -> None:
    fake.behaviour.mode = "overloaded"
    with FakeAnthropic(api_key=KEY) as second:
        berry = start_berry(
            config({"claude": claude_provider(fake), "claude2": claude_provider(second)})
        )
        with berry_client(berry) as sdk:
            chunks = stream_chunks(sdk)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
        assert len(second.recorder.requests) == 1


def error_counts(berry: Berry) -> dict[tuple[str, str], float]:
    families = {f.name: f for f in text_string_to_metric_families(prometheus(berry))}
    return {
        (s.labels["backend"], s.labels["error_type"]): s.value
        for s in families["berry_api_backend_error_count"].samples
        if s.name.endswith("_total")
    }


def prometheus(berry: Berry) -> str:
    response = HTTP.get(f"{berry.url}/prometheus")
    assert response.status_code == 200
    return response.text


def test_client_mistakes_come_back_openai_shaped(
    fake: FakeAnthropic,
    make_upstream: Callable[..., DemoUpstream],
    start_berry: Callable[[Config], Berry],
) -> None:
    fake.behaviour.mode = "invalid_request"
    fake.behaviour.error_message = "messages.0.content: this is not allowed (fake)"
    demo = make_upstream(name="demo")
    berry = start_berry(config({"claude": claude_provider(fake), "demo": demo_provider(demo)}))
    with berry_client(berry) as sdk, pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=PUBLIC, messages=HELLO)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["message"] == "messages.0.content: this is not allowed (fake)"
    assert error["type"] == "invalid_request_error"
    assert demo.stats()["requests"] == 0  # the client's mistake: no failover
    assert error_counts(berry) == {}


def test_anthropic_401_is_an_auth_failure(
    fake: FakeAnthropic,
    make_upstream: Callable[..., DemoUpstream],
    start_berry: Callable[[Config], Berry],
) -> None:
    wrong = claude_provider(fake, api_key=provider_key("wrong"))
    alone = start_berry(config({"claude": wrong}))
    response = HTTP.post(
        f"{alone.base_url}/chat/completions",
        content=orjson.dumps({"model": PUBLIC, "messages": HELLO}),
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )
    # Never passed through: a 401 would tell the client its own token is wrong.
    assert response.status_code == 502, response.text
    assert "auth" in response.json()["error"]["message"]
    assert "x-api-key" not in response.text and provider_key("wrong") not in response.text
    assert error_counts(alone) == {(f"claude:{MODEL}", "auth"): 1.0}

    demo = make_upstream(name="demo")
    berry = start_berry(config({"claude": wrong, "demo": demo_provider(demo)}))
    with berry_client(berry) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model=PUBLIC, messages=HELLO)
    assert raw.headers["x-berry-backend"] == "demo:up-model"


def test_mid_stream_error_interrupts_the_stream(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    fake.behaviour.mode = "stream_error"
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model=PUBLIC, messages=HELLO, stream=True):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert received and TEXT.startswith("".join(received)) and "".join(received) != TEXT
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "stream_interrupted"
    assert "overloaded_error" in body["message"]


def test_health_probe(fake: FakeAnthropic) -> None:
    gateway = Gateway(config({"claude": claude_provider(fake)}))
    backend = gateway.config.models[PUBLIC].backends[0]

    async def probe() -> list[Any]:
        await gateway.start()
        try:
            results = [await gateway.prober.probe(backend, "idle")]
            fake.behaviour.mode = "overloaded"
            results.append(await gateway.prober.probe(backend, "recovery"))
            return results
        finally:
            await gateway.close()

    alive, down = asyncio.run(probe())
    assert alive.ok and alive.error is None
    assert not down.ok and down.error is ErrorClass.SERVER
    sent = fake.recorder.requests[0].json
    assert sent["max_tokens"] == 1 and sent["model"] == MODEL


def test_no_provider_key_in_answers_logs_or_metrics(
    fake: FakeAnthropic,
    start_berry: Callable[[Config], Berry],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_beta = "beta-secret-value-0123456789"
    berry = start_berry(
        config({"claude": claude_provider(fake, headers={"anthropic-beta": secret_beta})})
    )
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)

    def chat(**fields: Any) -> None:
        body = {"model": PUBLIC, "messages": HELLO, **fields}
        response = HTTP.post(
            f"{berry.base_url}/chat/completions",
            content=orjson.dumps(body),
            headers={"Authorization": f"Bearer {USER_TOKEN}"},
        )
        seen.append(response.text + str(response.headers))

    chat()
    chat(stream=True, stream_options={"include_usage": True})
    fake.behaviour.mode = "invalid_request"  # an error body that quotes the key
    fake.behaviour.error_message = f"key {KEY} and header {secret_beta} are wrong"
    chat()
    assert "[redacted]" in seen[-1]
    for mode in ("overloaded", "stream_error"):
        fake.behaviour.mode = mode
        chat(stream=True)
    chat(n=3)
    for path in ("/prometheus", "/metrics", "/health", "/admin/backend-health"):
        response = HTTP.get(
            f"{berry.url}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        seen.append(response.text)
    assert len(fake.recorder.requests) == 5
    everything = "\n".join([*seen, caplog.text])
    for secret in (KEY, secret_beta):
        assert secret not in everything


def test_token_counters_count_anthropic_usage(
    fake: FakeAnthropic, client: openai.OpenAI, claude_berry: Berry
) -> None:
    fake.behaviour.cache_read_input_tokens = 10
    completion = client.chat.completions.create(model=PUBLIC, messages=HELLO)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 10
    chunks = stream_chunks(client, stream_options={"include_usage": True})
    streamed = chunks[-1].usage
    assert streamed is not None
    expected = {
        "prompt": float(completion.usage.prompt_tokens + streamed.prompt_tokens),
        "completion": float(completion.usage.completion_tokens + streamed.completion_tokens),
    }
    assert expected == {"prompt": 28.0, "completion": 8.0}

    def counted() -> dict[str, float]:
        families = {f.name: f for f in text_string_to_metric_families(prometheus(claude_berry))}
        return {
            s.labels["type"]: s.value
            for s in families["berry_api_tokens"].samples
            if s.name.endswith("_total") and s.labels["backend"] == f"claude:{MODEL}"
        }

    # A stream's usage is counted when its generator closes, just after the client's [DONE].
    deadline = time.monotonic() + 5
    while counted() != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert counted() == expected
