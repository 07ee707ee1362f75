"""The ``gemini`` dialect: OpenAI chat completions in, the Gemini API out, and back.

Unit tests pin the translation (requests, JSON Schema reduction, answers, streams, errors)
without servers. The hypothesis test proves that any valid OpenAI body translates into a
request the strict FakeGemini accepts, and that its answer translates into what the openai
SDK's own types parse. The end-to-end tests drive a real Berry in front of FakeGemini with
the official openai SDK, the way clients use it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import support  # noqa: F401  (puts local/ on sys.path)
from berry_shared.backend_state import ErrorClass
from berry_shared.chat_request import ChatRequest, parse_chat_request
from berry_shared.config import Config
from berry_shared.dialects import build_dialects
from berry_shared.dialects.base import AttemptFailed, ClientMistake, StreamBroken, Unsupported
from berry_shared.dialects.gemini import api_base, model_path
from berry_shared.dialects.gemini_request import (
    THOUGHT_SIGNATURE_BYPASS,
    before_gemini_3,
    function_calling_config,
    gemini_request,
)
from berry_shared.dialects.gemini_response import GeminiStream, choices, usage_from_gemini
from berry_shared.dialects.gemini_schema import reduce_schema
from berry_shared.gateway import Gateway
from dialect_support import HTTP, berry_client, one_model_config
from fakes.gemini import FakeGemini
from openai_bodies import PNG_DATA_URL, chat_bodies
from support import ADMIN_TOKEN, PROVIDER_KEY_PREFIX, USER_TOKEN, Berry, provider_key

GEMINI_2 = "gemini-2.5-flash"
GEMINI_3 = "gemini-3-flash-preview"
FAKE_TEXT = "Hello from fake Gemini"
MESSAGES = [{"role": "user", "content": "hello there"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def chat_of(body: dict[str, Any]) -> ChatRequest:
    return parse_chat_request(orjson.dumps(body))


def translate(body: dict[str, Any], model: str = GEMINI_2) -> dict[str, Any]:
    return gemini_request(chat_of({"model": "m", **body}).body, model)


def dialect(key: str = provider_key("gem"), base_url: str = "https://g.example/v1beta") -> Any:
    config = gemini_config({"gem": {"base_url": base_url, "api_key": key}})
    return build_dialects(config.providers)["gem"]


def gemini_config(
    providers: dict[str, dict[str, Any]],
    backends: list[dict[str, Any]] | None = None,
    settings: dict[str, Any] | None = None,
) -> Config:
    """One public model "gem-model"; providers are Gemini unless they say otherwise."""
    section = {
        pid: {
            "name": f"Provider {pid}",
            "models": [GEMINI_2, GEMINI_3, "up-model"],
            "backend_type": "gemini",
            **provider,
        }
        for pid, provider in providers.items()
    }
    if backends is None:
        backends = [{"provider": pid, "model": GEMINI_2} for pid in providers]
    breaker = {"circuit_breaker_timeout_seconds": 60}
    return one_model_config(section, backends, "gem-model", {**breaker, **(settings or {})})


# =============================================================================================
# Requests
# =============================================================================================


def test_a_whole_conversation_translates_part_by_part() -> None:
    request = translate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is here?"},
                        {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
                {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 3}'},
                {"role": "user", "content": "Thanks"},
            ],
        },
        model=GEMINI_3,
    )
    assert request["systemInstruction"] == {
        "parts": [{"text": "Be brief."}, {"text": "Use metric."}]
    }
    user, model, results, thanks = request["contents"]
    assert user["role"] == "user"
    assert user["parts"][0] == {"text": "What is here?"}
    png = PNG_DATA_URL.split(",", 1)[1]
    assert user["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": png}}
    file_part = {"fileUri": "https://x.test/cat.png", "mimeType": "image/png"}
    assert user["parts"][2] == {"fileData": file_part}
    assert model["role"] == "model"
    assert model["parts"] == [
        {"text": "Let me check."},
        {
            "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
            "thoughtSignature": THOUGHT_SIGNATURE_BYPASS,  # the first call of the step only
        },
        {"functionCall": {"name": "get_time", "args": {}}},
    ]
    # Names come from the calls the ids answer; a non-object result is wrapped.
    assert results == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
            {"functionResponse": {"name": "get_weather", "response": {"temp": 3}}},
        ],
    }
    assert thanks == {"role": "user", "parts": [{"text": "Thanks"}]}


def test_gemini_2_calls_carry_no_thought_signature() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c", "content": "[1, 2]"},
            ]
        }
    )
    assert request["contents"][1]["parts"] == [{"functionCall": {"name": "f", "args": {}}}]
    assert request["contents"][2]["parts"][0]["functionResponse"]["response"] == {
        "result": "[1, 2]"
    }
    assert before_gemini_3("models/gemini-2.0-flash") and before_gemini_3("gemini-1.5-pro")
    assert not before_gemini_3(GEMINI_3) and not before_gemini_3("gemini-flash-latest")


def test_consecutive_turns_of_one_role_share_a_content() -> None:
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "c"},
                {"role": "assistant", "content": ""},  # empty: nothing to send
                {"role": "user", "content": "d"},
            ]
        }
    )
    assert request["contents"] == [
        {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        {"role": "model", "parts": [{"text": "c"}]},
        {"role": "user", "parts": [{"text": "d"}]},
    ]
    assert "systemInstruction" not in request


def test_a_system_message_alone_becomes_the_user_turn() -> None:
    request = translate({"messages": [{"role": "system", "content": "Say hi."}]})
    assert request["contents"] == [{"role": "user", "parts": [{"text": "Say hi."}]}]
    assert "systemInstruction" not in request


def test_generation_config_maps_sampling_and_drops_what_gemini_lacks() -> None:
    request = translate(
        {
            "messages": MESSAGES,
            "max_tokens": 50,
            "temperature": 0.3,
            "top_p": 0.9,
            "stop": "END",
            "n": 3,
            "seed": 7,
            "frequency_penalty": 0.5,
            "presence_penalty": 0.5,
            "logprobs": False,
            "user": "someone",
            "parallel_tool_calls": False,
            "stream_options": {"include_usage": True},
        }
    )
    assert request["generationConfig"] == {
        "maxOutputTokens": 50,
        "temperature": 0.3,
        "topP": 0.9,
        "stopSequences": ["END"],
        "candidateCount": 3,
        "seed": 7,
    }
    assert set(request) == {"contents", "generationConfig"}
    config = translate({"messages": MESSAGES, "max_completion_tokens": 9, "max_tokens": 1})
    assert config["generationConfig"] == {"maxOutputTokens": 9}  # the newer name wins
    assert "generationConfig" not in translate({"messages": MESSAGES, "seed": 2**40, "n": 1})


def test_response_formats_map_to_json_output() -> None:
    json_mode = translate({"messages": MESSAGES, "response_format": {"type": "json_object"}})
    assert json_mode["generationConfig"] == {"responseMimeType": "application/json"}
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"answer": {"type": "string", "format": "uuid"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    structured = translate({"messages": MESSAGES, "response_format": response_format})
    assert structured["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    }
    text = translate({"messages": MESSAGES, "response_format": {"type": "text"}})
    assert "generationConfig" not in text


def test_tools_become_function_declarations_with_json_schema() -> None:
    request = translate({"messages": MESSAGES, "tools": [WEATHER_TOOL], "tool_choice": "auto"})
    assert request["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                }
            ]
        }
    ]
    assert request["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    # tool_choice without tools says nothing to Gemini.
    assert "toolConfig" not in translate({"messages": MESSAGES, "tool_choice": "required"})


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "f"}},
            {"mode": "ANY", "allowedFunctionNames": ["f"]},
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "g"}}],
                },
            },
            {"mode": "ANY", "allowedFunctionNames": ["g"]},
        ),
        (
            {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
            {"mode": "AUTO"},
        ),
    ],
)
def test_tool_choice_becomes_a_function_calling_config(choice: Any, expected: Any) -> None:
    assert function_calling_config(choice) == {"functionCallingConfig": expected}


def test_tools_with_json_output_before_gemini_3() -> None:
    body = {
        "messages": MESSAGES,
        "tools": [WEATHER_TOOL],
        "response_format": {"type": "json_object"},
    }
    with pytest.raises(Unsupported) as refused:
        translate(body)
    assert refused.value.param == "response_format"
    # With calls ruled out the tools are left out instead; Gemini 3 takes both.
    no_calls = translate({**body, "tool_choice": "none"})
    assert "tools" not in no_calls and "toolConfig" not in no_calls
    both = translate(body, model=GEMINI_3)
    assert both["tools"] and both["generationConfig"]["responseMimeType"] == "application/json"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "tool_call_id"),
        ({"messages": MESSAGES, "n": 9}, "n"),
        ({"messages": MESSAGES, "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0]"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}
                ]
            },
            "content",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:,abc"}}],
                    }
                ]
            },
            "content",
        ),
        ({"messages": [{"role": "user", "content": ""}]}, "messages"),
    ],
)
def test_what_gemini_cannot_take_is_unsupported(body: dict[str, Any], param: str) -> None:
    with pytest.raises(Unsupported) as refused:
        translate(body)
    assert param in (refused.value.param or "")
    assert refused.value.message


def test_odd_body_shapes_are_unsupported_never_a_crash() -> None:
    gemini = dialect()
    for body in (
        {"messages": [{"role": "assistant", "tool_calls": [5]}]},
        {"messages": [{"role": "user", "content": 42}]},
        {"messages": MESSAGES, "tools": "all"},
        {"messages": MESSAGES, "tool_choice": {"type": "function"}},
    ):
        with pytest.raises(Unsupported):
            gemini.chat_request(chat_of({"model": "m", **body}), GEMINI_2)


def test_urls_headers_and_model_paths() -> None:
    assert api_base("https://generativelanguage.googleapis.com") == (
        "https://generativelanguage.googleapis.com/v1beta"
    )
    assert api_base("https://generativelanguage.googleapis.com/") == (
        "https://generativelanguage.googleapis.com/v1beta"
    )
    assert api_base("https://proxy.test/google/v1alpha/") == "https://proxy.test/google/v1alpha"
    assert model_path(GEMINI_2) == f"models/{GEMINI_2}"
    assert model_path(f"models/{GEMINI_2}") == f"models/{GEMINI_2}"
    assert model_path("tunedModels/my-tune") == "tunedModels/my-tune"
    assert model_path("odd:model/x?y") == "models/odd%3Amodel%2Fx%3Fy"
    key = provider_key("gem")
    gemini = dialect(key)
    whole = gemini.chat_request(chat_of({"model": "m", "messages": MESSAGES}), GEMINI_2)
    assert whole.url == f"https://g.example/v1beta/models/{GEMINI_2}:generateContent"
    assert whole.headers["x-goog-api-key"] == key
    assert key not in whole.url and "key=" not in whole.url
    assert whole.read_timeout == gemini.read_timeout
    stream = gemini.chat_request(
        chat_of({"model": "m", "messages": MESSAGES, "stream": True}), GEMINI_2
    )
    assert stream.url.endswith(f"/models/{GEMINI_2}:streamGenerateContent?alt=sse")
    probe = orjson.loads(gemini.probe_request(GEMINI_2).body)
    assert probe["generationConfig"] == {"maxOutputTokens": 1}


# =============================================================================================
# JSON Schema reduction
# =============================================================================================


def test_schema_keywords_outside_geminis_subset_are_dropped() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "internal",
        "type": "object",
        "title": "Args",
        "properties": {
            "when": {"type": "string", "format": "date-time", "default": "now"},
            "mail": {"type": "string", "format": "email", "pattern": "@"},
            "n": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10, "multipleOf": 2},
            "flags": {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True},
            "extra": {"not": {"type": "null"}, "patternProperties": {"^x": {}}},
        },
        "required": ["when"],
        "additionalProperties": {"type": "string", "examples": ["a"]},
    }
    original = orjson.dumps(schema)
    assert reduce_schema(schema) == {
        "type": "object",
        "title": "Args",
        "properties": {
            "when": {"type": "string", "format": "date-time", "default": "now"},
            "mail": {"type": "string", "pattern": "@"},
            "n": {"type": "integer", "minimum": 0},
            "flags": {"type": "array", "items": {"type": "boolean"}},
            "extra": {},
        },
        "required": ["when"],
        "additionalProperties": {"type": "string"},
    }
    assert orjson.dumps(schema) == original  # the client's body is left as it was


def test_schema_keywords_with_a_gemini_equivalent_are_rewritten() -> None:
    schema = {
        "type": "object",
        "definitions": {"Point": {"type": "object", "properties": {"x": {"const": 1}}}},
        "properties": {
            "at": {"$ref": "#/definitions/Point"},
            "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]},
            "maybe": {"type": ["string", "null"], "description": "or nothing", "maxLength": 3},
            "many": {"type": ["integer", "string"]},
            "flag": {"const": True},
            "mixed": {"enum": ["a", None]},
            "pair": {"type": "array", "items": [{"type": "string"}, {"type": "number"}]},
            "both": {
                "allOf": [
                    {"properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "number"}}, "required": ["b"]},
                ],
                "type": "object",
            },
        },
    }
    assert reduce_schema(schema) == {
        "type": "object",
        "$defs": {"Point": {"type": "object", "properties": {"x": {"enum": [1]}}}},
        "properties": {
            "at": {"$ref": "#/$defs/Point"},
            "kind": {"anyOf": [{"enum": ["a"]}, {"enum": ["b"]}]},
            "maybe": {
                "description": "or nothing",
                "anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}],
            },
            "many": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "flag": {},
            "mixed": {},
            "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]},
            "both": {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    }


def test_schema_reduction_is_bounded_and_total() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        deep = {"type": "object", "properties": {"x": deep}}
    reduced = reduce_schema(deep)
    depth = 0
    while "properties" in reduced:
        reduced, depth = reduced["properties"]["x"], depth + 1
    assert 30 <= depth <= 40
    assert reduce_schema("not a schema") == {}
    assert reduce_schema({"properties": {"a": True}, "type": ["null"]}) == {
        "properties": {"a": {}},
        "type": "null",
    }


# =============================================================================================
# Answers and streams
# =============================================================================================


@pytest.mark.parametrize(
    ("reason", "called", "expected"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("OTHER", False, "stop"),
        (None, False, "stop"),
    ],
)
def test_finish_reasons(reason: str | None, called: bool, expected: str) -> None:
    parts: list[dict[str, Any]] = [{"text": "x"}]
    if called:
        parts.append({"functionCall": {"name": "f", "args": {}}})
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if reason:
        candidate["finishReason"] = reason
    assert choices({"candidates": [candidate]}, 1)[0]["finish_reason"] == expected


def test_a_whole_answer_becomes_a_chat_completion() -> None:
    answer = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Thinking...", "thought": True},
                        {"text": "Calling "},
                        {"text": "now."},
                        {"functionCall": {"name": "f", "args": {"a": 1}}},
                        {"functionCall": {"name": "g", "id": "gem-id-1"}},
                    ],
                },
                "finishReason": "STOP",
            },
            {"content": {"parts": [{"text": "second"}]}, "finishReason": "STOP", "index": 1},
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 5,
            "thoughtsTokenCount": 7,
            "cachedContentTokenCount": 4,
            "toolUsePromptTokenCount": 2,
            "totalTokenCount": 24,
        },
        "modelVersion": "gemini-2.5-flash-001",
    }
    chat = chat_of({"model": "gem-model", "messages": MESSAGES, "n": 2})
    completion = dialect().completion(orjson.dumps(answer), "application/json", chat)
    parsed = ChatCompletion.model_validate(orjson.loads(completion.body))
    assert parsed.model == "gemini-2.5-flash-001" and parsed.object == "chat.completion"
    first, second = parsed.choices
    assert (first.index, second.index) == (0, 1)
    assert first.message.content == "Calling now."
    assert first.finish_reason == "tool_calls" and first.logprobs is None
    calls = first.message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["f", "g"]
    assert orjson.loads(calls[0].function.arguments) == {"a": 1}
    assert calls[0].id.startswith("call_") and len(calls[0].id) > 20
    assert calls[1].id == "gem-id-1" and calls[1].function.arguments == "{}"
    assert second.message.content == "second" and second.message.tool_calls is None
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (12, 12)
    assert parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 4
    assert completion.usage == usage_from_gemini(answer["usageMetadata"])


def test_a_blocked_prompt_is_a_content_filter_answer() -> None:
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3},
    }
    chat = chat_of({"model": "gem-model", "messages": MESSAGES, "n": 2})
    completion = dialect().completion(orjson.dumps(blocked), "application/json", chat)
    parsed = ChatCompletion.model_validate(orjson.loads(completion.body))
    assert [c.finish_reason for c in parsed.choices] == ["content_filter"] * 2
    assert [c.message.content for c in parsed.choices] == ["", ""]
    assert completion.usage is not None and completion.usage.prompt_tokens == 3


@pytest.mark.parametrize("body", [b"not json", b"[]", b"{}", b'{"candidates": [5]}'])
def test_an_answer_that_is_no_answer_fails_over(body: bytes) -> None:
    chat = chat_of({"model": "gem-model", "messages": MESSAGES})
    with pytest.raises(AttemptFailed):
        dialect().completion(body, "application/json", chat)


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)


STREAM_EVENTS = (
    {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]},
    {
        "candidates": [
            {
                "content": {
                    "parts": [{"text": "lo"}, {"functionCall": {"name": "f", "args": {"q": "x"}}}]
                }
            }
        ]
    },
    {
        "candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6},
        "modelVersion": "gemini-2.5-flash",
    },
)


def decode(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert events.pop() == b"[DONE]"
    chunks = [orjson.loads(e) for e in events]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    return chunks


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_stream_becomes_openai_chunks_however_it_is_split(include_usage: bool) -> None:
    raw = sse(*STREAM_EVENTS)
    outputs = []
    for size in (1, 7, len(raw)):
        stream = GeminiStream("gem-model", include_usage, 1)
        out = b"".join(stream.feed(raw[i : i + size]) for i in range(0, len(raw), size))
        outputs.append(decode(out + stream.finish()))
        assert stream.usage is not None and stream.usage.total_tokens == 10
    chunks = outputs[0]
    assert all(len(o) == len(chunks) for o in outputs)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Hel", "lo"]
    call = chunks[3]["choices"][0]["delta"]["tool_calls"][0]
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "f", "arguments": '{"q":"x"}'}
    finish = chunks[4]
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    if include_usage:
        assert len(chunks) == 6 and chunks[5]["choices"] == []
        assert chunks[5]["usage"] == {
            "prompt_tokens": 4,
            "completion_tokens": 6,
            "total_tokens": 10,
        }
    else:
        assert len(chunks) == 5 and all("usage" not in c for c in chunks)


def test_a_stream_without_its_finish_reason_is_broken() -> None:
    stream = GeminiStream("gem-model", False, 1)
    assert stream.feed(sse(STREAM_EVENTS[0]))
    with pytest.raises(StreamBroken):
        stream.finish()
    assert stream.completion_tokens_estimate == 1
    cut = GeminiStream("gem-model", False, 1)
    cut.feed(sse(STREAM_EVENTS[0]) + b'data: {"candidates": [')
    with pytest.raises(StreamBroken):
        cut.finish()


def test_an_error_event_breaks_the_stream() -> None:
    stream = GeminiStream("gem-model", False, 1)
    with pytest.raises(StreamBroken) as broken:
        stream.feed(sse({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}))
    assert broken.value.error is ErrorClass.RATE_LIMIT


def test_a_blocked_stream_answers_each_choice_with_content_filter() -> None:
    stream = GeminiStream("gem-model", True, 2)
    out = stream.feed(sse({"promptFeedback": {"blockReason": "OTHER"}}))
    chunks = decode(out + stream.finish())
    finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in chunks[:4]]
    assert finishes == [(0, None), (0, "content_filter"), (1, None), (1, "content_filter")]
    assert chunks[-1]["choices"] == [] and "usage" in chunks[-1]


# =============================================================================================
# Errors
# =============================================================================================


def google_error(code: int, status: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "status": status, **extra}})


def test_errors_are_classified_like_the_gemini_api_means_them() -> None:
    key = provider_key("gem")
    gemini = dialect(key)
    invalid_key = gemini.failure(
        400,
        {},
        google_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            details=[
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            ],
        ),
    )
    assert isinstance(invalid_key, AttemptFailed) and invalid_key.error is ErrorClass.AUTH
    region = gemini.failure(400, {}, google_error(400, "FAILED_PRECONDITION", "User location"))
    assert isinstance(region, AttemptFailed) and region.error is ErrorClass.AUTH
    mistake = gemini.failure(
        400, {}, google_error(400, "INVALID_ARGUMENT", f"Bad temperature (key {key})")
    )
    assert isinstance(mistake, ClientMistake) and mistake.status == 400
    error = orjson.loads(mistake.body)["error"]
    assert error["message"] == "Bad temperature (key [redacted])"
    assert error["type"] == "invalid_request_error"
    limited = gemini.failure(
        429,
        {},
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "quota",
            details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"}],
        ),
    )
    assert isinstance(limited, AttemptFailed)
    assert (limited.error, limited.retry_after) == (ErrorClass.RATE_LIMIT, 20.0)
    assert limited.detail == "HTTP 429 RESOURCE_EXHAUSTED"
    header_wins = gemini.failure(429, {"Retry-After": "3"}, b"")
    assert isinstance(header_wins, AttemptFailed) and header_wins.retry_after == 3.0
    for status, expected in (
        (500, ErrorClass.SERVER),
        (503, ErrorClass.SERVER),
        (504, ErrorClass.TIMEOUT),
        (404, ErrorClass.MODEL),
        (403, ErrorClass.AUTH),
    ):
        outcome = gemini.failure(status, {}, google_error(status, "X", "m"))
        assert isinstance(outcome, AttemptFailed) and outcome.error is expected, status
    odd = gemini.failure(500, {}, google_error(500, "not a <status>", "m"))
    assert isinstance(odd, AttemptFailed) and odd.detail == "HTTP 500"


# =============================================================================================
# Hypothesis: any valid OpenAI body is a request the strict fake accepts
# =============================================================================================


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=chat_bodies(), model=st.sampled_from([GEMINI_2, GEMINI_3]))
def test_any_valid_openai_body_is_accepted_by_the_strict_fake(
    shared_fake: FakeGemini, body: dict[str, Any], model: str
) -> None:
    gemini = dialect(shared_fake.api_key, shared_fake.base_url)
    chat = chat_of(body)
    try:
        request = gemini.chat_request(chat, model)
    except Unsupported:
        # Only one refusal is expected: tools with JSON output before Gemini 3.
        assert before_gemini_3(model) and body.get("tools")
        assert body["response_format"]["type"] != "text"
        return
    response = HTTP.post(request.url, content=request.body, headers=dict(request.headers))
    assert response.status_code == 200, (orjson.loads(request.body), response.text)
    if chat.stream:
        stream = gemini.stream_decoder(chat)
        out = stream.feed(response.content) + stream.finish()
        chunks = decode(out)
        assert any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks)
        assert any("usage" in c for c in chunks) == chat.include_usage
    else:
        completion = gemini.completion(response.content, response.headers["content-type"], chat)
        ChatCompletion.model_validate(orjson.loads(completion.body))


# =============================================================================================
# End to end: the openai SDK through Berry to FakeGemini
# =============================================================================================


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakeGemini]]:
    started: list[FakeGemini] = []

    def make(**behaviour: Any) -> FakeGemini:
        fake = FakeGemini(api_key=provider_key(f"gem{len(started)}")).start()
        for key, value in behaviour.items():
            setattr(fake.behaviour, key, value)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def fake(fakes: Callable[..., FakeGemini]) -> FakeGemini:
    return fakes()


@pytest.fixture
def berry(fake: FakeGemini, start_berry: Callable[[Config], Berry]) -> Berry:
    # A bare host as base_url: Berry adds /v1beta.
    return start_berry(
        gemini_config(
            {"gem": {"base_url": fake.root_url, "api_key": fake.api_key}},
            backends=[{"provider": "gem", "model": GEMINI_2}],
        )
    )


def client(berry: Berry) -> openai.OpenAI:
    return berry_client(berry, timeout=15)


def test_non_stream_answer_and_what_gemini_received(fake: FakeGemini, berry: Berry) -> None:
    raw = client(berry).chat.completions.with_raw_response.create(
        model="gem-model",
        messages=[{"role": "system", "content": "Be kind."}, *MESSAGES],
        temperature=0.2,
        max_tokens=100,
    )
    completion = raw.parse()
    assert raw.headers["x-berry-backend"] == f"gem:{GEMINI_2}"
    choice = completion.choices[0]
    assert choice.message.content == FAKE_TEXT and choice.message.role == "assistant"
    assert choice.finish_reason == "stop" and choice.index == 0
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 4
    seen = fake.recorder.last
    assert seen.path == f"/v1beta/models/{GEMINI_2}:generateContent" and seen.query == ""
    assert seen.headers["x-goog-api-key"] == fake.api_key
    assert seen.json["systemInstruction"] == {"parts": [{"text": "Be kind."}]}
    assert seen.json["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 100}


def test_stream_without_include_usage_has_no_usage_chunk(fake: FakeGemini, berry: Berry) -> None:
    fake.behaviour.stream_events = 4
    chunks = list(
        client(berry).chat.completions.create(model="gem-model", messages=MESSAGES, stream=True)
    )
    assert fake.recorder.last.query == "alt=sse"
    assert fake.recorder.last.path.endswith(":streamGenerateContent")
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == FAKE_TEXT
    assert len(chunks) >= 6  # role, four pieces, finish: relayed as they came
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_stream_with_include_usage_ends_with_one_usage_chunk(berry: Berry) -> None:
    chunks = list(
        client(berry).chat.completions.create(
            model="gem-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    with_usage = [i for i, c in enumerate(chunks) if c.usage is not None]
    assert with_usage == [len(chunks) - 1]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 4
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_tool_call_round_trip_on_gemini_3(
    fake: FakeGemini, start_berry: Callable[[Config], Berry]
) -> None:
    # Gemini 3 refuses calls without a thought signature: the bypass value must be sent.
    berry = start_berry(
        gemini_config(
            {"gem": {"base_url": fake.base_url, "api_key": fake.api_key}},
            backends=[{"provider": "gem", "model": GEMINI_3}],
        )
    )
    sdk = client(berry)
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = sdk.chat.completions.create(model="gem-model", messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather" and calls[0].id.startswith("call_")
    assert orjson.loads(calls[0].function.arguments) == {"city": "example"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 3 C"})
    second = sdk.chat.completions.create(model="gem-model", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == (
        'Function results: get_weather returned {"result":"sunny, 3 C"}'
    )
    sent = fake.recorder.last.json["contents"]
    assert sent[1]["parts"][0]["thoughtSignature"] == THOUGHT_SIGNATURE_BYPASS
    assert sent[2]["parts"][0]["functionResponse"]["name"] == "get_weather"


def test_streamed_parallel_tool_calls(fake: FakeGemini, berry: Berry) -> None:
    fake.behaviour.parallel_calls = True
    fake.behaviour.function_call_ids = True
    chunks = list(
        client(berry).chat.completions.create(
            model="gem-model",
            messages=MESSAGES,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
    )
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert [d.index for d in deltas] == [0, 1]
    assert all(d.id and d.id.startswith("call-") for d in deltas)  # Gemini's own ids
    assert len({d.id for d in deltas}) == 2
    assert all(d.function and d.function.name == "get_weather" for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    config = fake.recorder.last.json["toolConfig"]["functionCallingConfig"]
    assert config == {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}


def test_images_travel_as_inline_data_or_file_uris(fake: FakeGemini, berry: Berry) -> None:
    answer = client(berry).chat.completions.create(
        model="gem-model",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/b.jpg"}},
                ],
            }
        ],
    )
    assert answer.choices[0].message.content == FAKE_TEXT
    parts = fake.recorder.last.json["contents"][0]["parts"]
    inline = parts[1]["inlineData"]
    assert inline["mimeType"] == "image/png"
    assert base64.b64decode(inline["data"]).startswith(b"\x89PNG")
    assert parts[2] == {
        "fileData": {"fileUri": "https://example.com/b.jpg", "mimeType": "image/jpeg"}
    }
    assert answer.usage is not None and answer.usage.prompt_tokens > 2 * 258  # two media parts


def test_n_gives_as_many_choices(berry: Berry) -> None:
    answer = client(berry).chat.completions.create(model="gem-model", messages=MESSAGES, n=2)
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.message.content for c in answer.choices] == [FAKE_TEXT, f"{FAKE_TEXT} (candidate 2)"]
    stream = client(berry).chat.completions.create(
        model="gem-model", messages=MESSAGES, n=2, stream=True
    )
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: FAKE_TEXT, 1: f"{FAKE_TEXT} (candidate 2)"}
    assert finishes == {0: "stop", 1: "stop"}


def test_stop_sequences_and_length_finish_reasons(fake: FakeGemini, berry: Berry) -> None:
    sdk = client(berry)
    stopped = sdk.chat.completions.create(model="gem-model", messages=MESSAGES, stop=["fake"])
    assert stopped.choices[0].message.content == "Hello from "
    assert stopped.choices[0].finish_reason == "stop"
    assert fake.recorder.last.json["generationConfig"]["stopSequences"] == ["fake"]
    cut = sdk.chat.completions.create(model="gem-model", messages=MESSAGES, max_tokens=2)
    assert cut.choices[0].message.content == "Hello from"
    assert cut.choices[0].finish_reason == "length"


def test_blocked_prompts_and_filtered_answers_are_content_filter(
    fake: FakeGemini, berry: Berry
) -> None:
    sdk = client(berry)
    fake.behaviour.block_reason = "SAFETY"
    blocked = sdk.chat.completions.create(model="gem-model", messages=MESSAGES)
    assert blocked.choices[0].finish_reason == "content_filter"
    assert blocked.choices[0].message.content == ""
    chunks = list(sdk.chat.completions.create(model="gem-model", messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    fake.behaviour.block_reason = None
    fake.behaviour.finish_reason = "RECITATION"
    filtered = sdk.chat.completions.create(model="gem-model", messages=MESSAGES)
    assert filtered.choices[0].finish_reason == "content_filter"


@pytest.mark.parametrize("mode", ["rate_limited", "unavailable", "server_error"])
def test_overload_fails_over_to_an_openai_backend(
    mode: str,
    fake: FakeGemini,
    make_upstream: Callable[..., Any],
    start_berry: Callable[[Config], Berry],
) -> None:
    fake.behaviour.mode = mode
    demo = make_upstream(name="demo")
    berry = start_berry(
        gemini_config(
            {
                "gem": {"base_url": fake.base_url, "api_key": fake.api_key},
                "demo": {
                    "base_url": demo.base_url,
                    "api_key": provider_key("demo"),
                    "backend_type": "openai",
                },
            },
            backends=[
                {"provider": "gem", "model": GEMINI_2, "priority": 0},
                {"provider": "demo", "model": "up-model", "priority": 1},
            ],
        )
    )
    for stream in (False, True):
        raw = client(berry).chat.completions.with_raw_response.create(
            model="gem-model", messages=MESSAGES, stream=stream
        )
        assert raw.headers["x-berry-backend"] == "demo:up-model"
        if not stream:
            assert raw.headers["x-berry-attempts"] == "2"
            assert raw.parse().choices[0].message.content.startswith("Hello from demo upstream")
        # (A 429's retryDelay may keep the Gemini backend out of the second request's plan.)
    state = berry.state(f"gem:{GEMINI_2}")
    expected = ErrorClass.RATE_LIMIT if mode == "rate_limited" else ErrorClass.SERVER
    assert state.last_error is expected and state.last_success_at == 0


def test_a_503_fails_over_to_another_gemini_backend(
    fakes: Callable[..., FakeGemini], start_berry: Callable[[Config], Berry]
) -> None:
    down, up = fakes(mode="unavailable"), fakes()
    berry = start_berry(
        gemini_config(
            {
                "down": {"base_url": down.base_url, "api_key": down.api_key},
                "up": {"base_url": up.base_url, "api_key": up.api_key},
            },
            backends=[
                {"provider": "down", "model": GEMINI_2, "priority": 0},
                {"provider": "up", "model": GEMINI_2, "priority": 1},
            ],
        )
    )
    raw = client(berry).chat.completions.with_raw_response.create(
        model="gem-model", messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content == FAKE_TEXT
    assert raw.headers["x-berry-backend"] == f"up:{GEMINI_2}"
    assert len(down.recorder.requests) == 1 and len(up.recorder.requests) == 1


def test_invalid_argument_comes_back_as_an_openai_400_without_failover(
    fakes: Callable[..., FakeGemini], start_berry: Callable[[Config], Berry]
) -> None:
    bad, other = fakes(), fakes()
    message = "* GenerateContentRequest.generation_config.temperature: must be in [0, 2]."
    bad.behaviour.mode = "invalid_argument"
    bad.behaviour.error_message = message
    berry = start_berry(
        gemini_config(
            {
                "bad": {"base_url": bad.base_url, "api_key": bad.api_key},
                "other": {"base_url": other.base_url, "api_key": other.api_key},
            },
            backends=[
                {"provider": "bad", "model": GEMINI_2, "priority": 0},
                {"provider": "other", "model": GEMINI_2, "priority": 1},
            ],
        )
    )
    with pytest.raises(openai.BadRequestError) as error:
        client(berry).chat.completions.create(model="gem-model", messages=MESSAGES)
    assert error.value.status_code == 400
    body = error.value.body
    assert isinstance(body, dict) and body["message"] == message
    assert body["type"] == "invalid_request_error"
    assert error.value.response.headers["x-berry-attempts"] == "1"
    assert other.recorder.requests == []
    assert berry.state(f"bad:{GEMINI_2}").consecutive_failures == 0  # not the backend's fault


def test_an_invalid_key_is_an_auth_failure_that_fails_over(
    fakes: Callable[..., FakeGemini], start_berry: Callable[[Config], Berry]
) -> None:
    wrong, good = fakes(), fakes()
    berry = start_berry(
        gemini_config(
            {
                "wrong": {"base_url": wrong.base_url, "api_key": provider_key("not-the-key")},
                "good": {"base_url": good.base_url, "api_key": good.api_key},
            },
            backends=[
                {"provider": "wrong", "model": GEMINI_2, "priority": 0},
                {"provider": "good", "model": GEMINI_2, "priority": 1},
            ],
        )
    )
    raw = client(berry).chat.completions.with_raw_response.create(
        model="gem-model", messages=MESSAGES
    )
    assert raw.headers["x-berry-backend"] == f"good:{GEMINI_2}"
    assert "API key not valid" not in raw.text
    assert wrong.recorder.last.headers["x-goog-api-key"] == provider_key("not-the-key")
    assert berry.state(f"wrong:{GEMINI_2}").last_error is ErrorClass.AUTH


def test_a_stream_broken_midway_ends_with_stream_interrupted(
    fake: FakeGemini, berry: Berry
) -> None:
    fake.behaviour.mode = "stream_error"
    fake.behaviour.stream_events = 6
    response = HTTP.post(
        f"{berry.base_url}/chat/completions",
        json={"model": "gem-model", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {USER_TOKEN}"},
    )
    assert response.status_code == 200
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    assert "[DONE]" not in events
    assert orjson.loads(events[1])["choices"][0]["delta"]["content"]  # text came first
    error = orjson.loads(events[-1])["error"]
    assert error["code"] == "stream_interrupted" and error["message"]


def test_the_health_probe_succeeds(fake: FakeGemini) -> None:
    config = gemini_config({"gem": {"base_url": fake.base_url, "api_key": fake.api_key}})
    gateway = Gateway(config)
    backend = config.models["gem-model"].backends[0]

    async def probe() -> Any:
        try:
            return await gateway.prober.probe(backend, "idle")
        finally:
            await gateway.close()

    result = asyncio.run(probe())
    assert result.ok and result.error is None
    assert fake.recorder.last.json["generationConfig"] == {"maxOutputTokens": 1}
    fake.behaviour.mode = "unavailable"
    gateway = Gateway(config)
    failed = asyncio.run(probe())
    assert not failed.ok and failed.error is ErrorClass.SERVER


def test_the_key_never_reaches_a_url_an_answer_a_log_or_a_metric(
    fakes: Callable[..., FakeGemini],
    start_berry: Callable[[Config], Berry],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    good, broken = fakes(), fakes()
    key = good.api_key
    berry = start_berry(
        gemini_config(
            {
                "good": {"base_url": good.root_url, "api_key": key},
                "broken": {"base_url": broken.base_url, "api_key": broken.api_key},
                "wrongkey": {"base_url": good.base_url, "api_key": provider_key("wrongkey")},
            },
            backends=[
                {"provider": "good", "model": GEMINI_2},
                {"provider": "broken", "model": GEMINI_2},
                {"provider": "wrongkey", "model": GEMINI_2},
            ],
        )
    )
    texts: list[str] = []
    headers = {"Authorization": f"Bearer {USER_TOKEN}"}

    def chat(provider: str, stream: bool) -> None:
        body = {"model": "gem-model", "messages": MESSAGES, "stream": stream, "backend": provider}
        response = HTTP.post(f"{berry.base_url}/chat/completions", json=body, headers=headers)
        texts.extend([response.text, repr(dict(response.headers))])

    # A provider that echoes its key in an error message must still not leak it.
    broken.behaviour.error_message = f"Bad request for key {broken.api_key}"
    # The 429 last: its retryDelay keeps the backend out of later requests.
    for mode in ("invalid_argument", "stream_error", "server_error", "rate_limited"):
        broken.behaviour.mode = mode
        for stream in (False, True):
            chat("good", stream)
            chat("wrongkey", stream)  # Google's "API key not valid": an auth failure
            chat("broken", stream)
    assert any("[redacted]" in t for t in texts)  # the echoed key was met, and scrubbed
    for path in ("/prometheus", "/metrics", "/health", "/admin/backend-health"):
        response = HTTP.get(
            f"{berry.url}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        texts.append(response.text)
    assert "backend_request_count_total" in texts[-4]
    texts.append(caplog.text)
    keys = [key, broken.api_key, provider_key("wrongkey")]
    for text in texts:
        assert PROVIDER_KEY_PREFIX not in text, text[:300]
    for fake in (good, broken):
        for seen in fake.recorder.requests:
            assert not any(k in seen.path or k in seen.query for k in keys)
            assert "key=" not in seen.query
    assert good.recorder.requests and broken.recorder.requests
    # The key was in use, in its header only.
    assert good.recorder.requests[0].headers["x-goog-api-key"] == key
