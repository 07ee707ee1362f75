"""The ``bedrock`` dialect: OpenAI chat completions in, Amazon Bedrock's Converse API out.

Three layers: the pure parts (translation both ways, region and path, the SigV4 signer and
its credentials, event-stream decoding, error classes) without servers; random valid OpenAI
bodies (hypothesis) translated, signed and sent to the strict FakeBedrock, which must accept
every one; and Berry end to end with the official ``openai`` SDK as the client and the fake
as the upstream, over real HTTP on loopback. AWS credentials only ever come from the
environment as monkeypatch sets it, with empty config files, so a developer's ~/.aws never
matters and nothing leaks into other tests.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import openai
import orjson
import pytest
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.serialize import create_serializer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berry_shared.backend_state import ErrorClass
from berry_shared.config import Config, Provider
from berry_shared.dialects import build_dialects
from berry_shared.dialects.base import AttemptFailed, ClientMistake, StreamBroken, Unsupported
from berry_shared.dialects.bedrock import BedrockDialect, error_name, model_path
from berry_shared.dialects.bedrock_events import FrameDecoder, FrameError
from berry_shared.dialects.bedrock_request import converse_body, tool_use_id
from berry_shared.dialects.bedrock_response import completion, converse_usage, finish_reason
from berry_shared.dialects.bedrock_signer import (
    CredentialSource,
    SigV4Signer,
    bedrock_region,
    host_header,
)
from berry_shared.gateway import Gateway
from berry_shared.usage import Usage
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
from support import ADMIN_TOKEN, USER_TOKEN, Berry, DemoUpstream

# isort: split
# support put local/ on sys.path
from fakes.bedrock import (
    BEDROCK_ERROR_NAMESPACE,
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_SECRET_ACCESS_KEY,
    EVENT_STREAM_CONTENT_TYPE,
    AuthConfig,
    Behaviour,
    FakeBedrock,
    authenticate,
    event_frame,
    exception_frame,
)
from fakes.server import Receive, Scope, Send, ThreadedServer, read_body, send_bytes
from openai_bodies import PNG_1X1, PNG_DATA_URL, chat_bodies

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE_ARN = (
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
    "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
)
REGION = "us-east-1"
KEY = DEFAULT_ACCESS_KEY_ID
SECRET = DEFAULT_SECRET_ACCESS_KEY
SESSION_TOKEN = "IQoJb3JpZ2luX2VjBerryTestSessionToken0123456789abcdef"
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1iZXJyeS10ZXN0LTAxMjM0NTY3"  # a Bedrock API key's shape
SECRETS = (SECRET, SESSION_TOKEN, API_KEY)
TEXT = Behaviour().text  # "Hello from fake Bedrock"


def translate(body: dict[str, Any]) -> dict[str, Any]:
    return converse_body(chat_request(body).body)


def provider(
    base_url: str = f"https://bedrock-runtime.{REGION}.amazonaws.com", **extra: Any
) -> Provider:
    fields: dict[str, Any] = {
        "name": "Bedrock",
        "base_url": base_url,
        "api_key": API_KEY,
        "models": [MODEL],
        "backend_type": "bedrock",
        **extra,
    }
    return Provider.model_validate(fields)


def static_credentials(token: str | None = SESSION_TOKEN) -> CredentialSource:
    return CredentialSource(Credentials(KEY, SECRET, token))


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
        "system": [{"text": "Be terse."}, {"text": "Use metric."}],
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
    }


def test_content_parts_become_blocks_and_data_url_images_become_image_bytes() -> None:
    jpeg = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff").decode()
    request = translate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": jpeg}},
                        {"type": "image_url", "image_url": {"url": "s3://bucket/cat.webp"}},
                    ],
                }
            ]
        }
    )
    (message,) = request["messages"]
    png, jpg, s3 = message["content"][1:]
    assert message["content"][0] == {"text": "what is this?"}
    assert png == {
        "image": {"format": "png", "source": {"bytes": base64.b64encode(PNG_1X1).decode()}}
    }
    assert jpg["image"]["format"] == "jpeg"
    assert s3 == {
        "image": {"format": "webp", "source": {"s3Location": {"uri": "s3://bucket/cat.webp"}}}
    }


def test_turns_of_one_role_merge_and_blank_text_is_left_out() -> None:
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "user", "content": [{"type": "text", "text": "two"}]},
                {"role": "assistant", "content": "   "},  # blank: dropped, so no empty turn
                {"role": "user", "content": "three"},
                {"role": "assistant", "content": "four"},
            ]
        }
    )
    assert request["messages"] == [
        {"role": "user", "content": [{"text": "one"}, {"text": "two"}, {"text": "three"}]},
        {"role": "assistant", "content": [{"text": "four"}]},
    ]


def test_tool_calls_become_tool_use_and_tool_messages_tool_results() -> None:
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "weather and time?"},
                {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
                {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
                {"role": "user", "content": "thanks"},
            ],
            "tools": [WEATHER, TIME],
        }
    )
    assert request["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"text": "Let me look."},
                {
                    "toolUse": {
                        "toolUseId": "call_1",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    }
                },
                {"toolUse": {"toolUseId": "call_2", "name": "get_time", "input": {}}},
            ],
        },
        {
            "role": "user",  # the results and the next user text share one user turn
            "content": [
                {"toolResult": {"toolUseId": "call_1", "content": [{"json": {"temp": 21}}]}},
                {"toolResult": {"toolUseId": "call_2", "content": [{"text": "noon"}]}},
                {"text": "thanks"},
            ],
        },
    ]


def test_tool_results_that_are_not_json_objects_stay_text() -> None:
    for content, expected in [
        ("[1, 2]", [{"text": "[1, 2]"}]),
        ("{not json", [{"text": "{not json"}]),
        ([{"type": "text", "text": '{"a": 1}'}], [{"json": {"a": 1}}]),
        ("", []),  # blank text is rejected by Converse: no content at all instead
    ]:
        request = translate(
            {
                "messages": [
                    {"role": "user", "content": "go"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": content},
                ],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            }
        )
        assert request["messages"][2]["content"][0]["toolResult"]["content"] == expected


def test_tool_call_ids_converse_refuses_are_mapped_the_same_way_in_call_and_result() -> None:
    odd = "call with spaces/and slashes"
    assert tool_use_id("call_abc-1.2:3") == "call_abc-1.2:3"
    mapped = tool_use_id(odd)
    assert mapped != odd and mapped == tool_use_id(odd) and len(mapped) <= 64
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": odd,
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": odd, "content": "done"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    )
    assert request["messages"][1]["content"][0]["toolUse"]["toolUseId"] == mapped
    assert request["messages"][2]["content"][0]["toolResult"]["toolUseId"] == mapped


def test_inference_config_carries_max_tokens_temperature_top_p_and_stop() -> None:
    request = translate(
        {
            "messages": HELLO,
            "max_tokens": 50,
            "temperature": 1.7,  # OpenAI's 0..2; Converse's 0..1: clamped
            "top_p": 0.9,
            "stop": ["END", ""],
        }
    )
    assert request["inferenceConfig"] == {
        "maxTokens": 50,
        "temperature": 1.0,
        "topP": 0.9,
        "stopSequences": ["END"],
    }
    assert translate({"messages": HELLO, "max_completion_tokens": 7, "stop": "X"})[
        "inferenceConfig"
    ] == {"maxTokens": 7, "stopSequences": ["X"]}


def test_openai_only_fields_are_dropped() -> None:
    request = translate(
        {
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": True},
            "seed": 3,
            "frequency_penalty": 0.5,
            "presence_penalty": 0.5,
            "logprobs": False,
            "user": "user-1",
            "n": 1,
            "response_format": {"type": "json_object"},
            "parallel_tool_calls": True,
            "metadata": {"a": "b"},
        }
    )
    assert request == {"messages": [{"role": "user", "content": [{"text": "say hello to me"}]}]}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "get_time"}}, {"tool": {"name": "get_time"}}),
    ],
)
def test_tools_become_tool_specs_and_tool_choice_auto_any_tool(
    choice: Any, expected: dict[str, Any] | None
) -> None:
    body: dict[str, Any] = {"messages": HELLO, "tools": [WEATHER, TIME]}
    if choice is not None:
        body["tool_choice"] = choice
    config = translate(body)["toolConfig"]
    assert config["tools"] == [
        {
            "toolSpec": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "inputSchema": {"json": WEATHER["function"]["parameters"]},  # type: ignore[index]
            }
        },
        {"toolSpec": {"name": "get_time", "inputSchema": {"json": TIME["function"]["parameters"]}}},  # type: ignore[index]
    ]
    assert config.get("toolChoice") == expected


def test_tool_choice_none_withholds_tools_unless_the_history_needs_a_tool_config() -> None:
    assert "toolConfig" not in translate(
        {"messages": HELLO, "tools": [WEATHER], "tool_choice": "none"}
    )
    history = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
    ]
    with_none = translate({"messages": history, "tools": [WEATHER], "tool_choice": "none"})
    names = [tool["toolSpec"]["name"] for tool in with_none["toolConfig"]["tools"]]
    assert names == ["get_weather", "lookup"] and "toolChoice" not in with_none["toolConfig"]
    # A history with tool calls but no tools: stand-in specs, since Converse insists.
    assert translate({"messages": history})["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "lookup",
                    "inputSchema": {"json": {"type": "object", "properties": {}}},
                }
            }
        ]
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO, "n": 2}, "n"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "see"},
                            {
                                "type": "image_url",
                                "image_url": {"url": "https://example.com/a.png"},
                            },
                        ],
                    }
                ]
            },
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {"data": "AA==", "format": "wav"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/bmp;base64,AA=="},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content",
        ),
        ({"messages": [{"role": "assistant", "content": "I start"}]}, "messages"),
        ({"messages": HELLO, "tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools"),
    ],
)
def test_what_bedrock_cannot_do_is_unsupported(body: dict[str, Any], param: str) -> None:
    with pytest.raises(Unsupported) as raised:
        translate(body)
    assert raised.value.param == param
    assert raised.value.message


# --- Region, host, path, signature -----------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "region"),
    [
        ("https://bedrock-runtime.us-east-1.amazonaws.com", "us-east-1"),
        ("https://bedrock-runtime.eu-central-1.amazonaws.com/", "eu-central-1"),
        ("https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
        (
            "https://vpce-0a1b2c3d4e5f-abcdefgh.bedrock-runtime.ap-southeast-2.vpce.amazonaws.com",
            "ap-southeast-2",
        ),
        (
            "https://vpce-0a1b-xyz-us-west-2a.bedrock-runtime.us-west-2.vpce.amazonaws.com",
            "us-west-2",
        ),
        ("https://BEDROCK-RUNTIME.CA-CENTRAL-1.AMAZONAWS.COM", "ca-central-1"),
    ],
)
def test_region_comes_from_the_endpoint_host(base_url: str, region: str) -> None:
    # The host wins over the environment: it is where the request is signed for.
    assert bedrock_region(base_url, {"AWS_REGION": "sa-east-1"}) == region


def test_region_comes_from_the_environment_otherwise_and_is_required() -> None:
    url = "http://127.0.0.1:9000"
    assert bedrock_region(url, {"AWS_REGION": "eu-west-3"}) == "eu-west-3"
    assert bedrock_region(url, {"AWS_DEFAULT_REGION": "eu-west-2"}) == "eu-west-2"
    assert (
        bedrock_region(url, {"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "x"}) == "eu-west-3"
    )
    with pytest.raises(ValueError, match=r"no AWS region .* set AWS_REGION"):
        bedrock_region(url, {})


def test_a_sigv4_provider_without_a_region_fails_at_start_up(aws_env: None, monkeypatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(ValueError, match="no AWS region"):
        BedrockDialect("b", provider("http://127.0.0.1:9", api_key=""))
    BedrockDialect("b", provider("http://127.0.0.1:9"))  # an API key needs no region


def test_host_header_is_lower_case_without_the_default_port() -> None:
    assert host_header("https://Bedrock-Runtime.us-east-1.amazonaws.com:443") == (
        "bedrock-runtime.us-east-1.amazonaws.com"
    )
    assert host_header("http://127.0.0.1:8123") == "127.0.0.1:8123"
    assert host_header("http://[::1]:8123") == "[::1]:8123"


def boto3_path(model: str, stream: bool) -> str:
    """The path botocore's own REST-JSON serializer builds for Converse(Stream) on ``model``
    (what boto3 sends; nothing is sent here)."""
    service = botocore.session.get_session().get_service_model("bedrock-runtime")
    operation = service.operation_model("ConverseStream" if stream else "Converse")
    params = {"modelId": model, "messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    request = create_serializer(service.metadata["protocol"]).serialize_to_request(
        params, operation
    )
    return str(request["url_path"])


@pytest.mark.parametrize("model", [MODEL, PROFILE_ARN, "amazon.nova-lite-v1:0", "meta.llama3~x"])
@pytest.mark.parametrize("stream", [False, True])
def test_model_ids_are_encoded_in_the_path_exactly_as_boto3_does(model: str, stream: bool) -> None:
    assert model_path(model, stream) == boto3_path(model, stream)


def signed(
    dialect: BedrockDialect, body: dict[str, Any], model: str = MODEL
) -> tuple[str, dict[str, str], bytes]:
    request = dialect.chat_request(chat_request(body), model)
    return str(request.url), dict(request.headers), request.body


def verify(
    url: str, headers: dict[str, str], body: bytes, token: str | None = SESSION_TOKEN
) -> str:
    """The fake's own check (botocore recomputing the signature from what was sent)."""
    scheme, _, rest = url.partition("://")
    path = "/" + rest.partition("/")[2]
    auth = AuthConfig(REGION, KEY, SECRET, token, None)
    lowered = {name.lower(): value for name, value in headers.items()}
    return authenticate(auth, "POST", scheme, path, "", lowered, body)


def sigv4_dialect(monkeypatch, **extra: Any) -> BedrockDialect:
    """A SigV4 dialect signing with the fake's keys (and a session token)."""
    monkeypatch.setattr(
        "berry_shared.dialects.bedrock.CredentialSource.from_default_chain",
        classmethod(lambda cls: static_credentials()),
    )
    monkeypatch.setenv("AWS_REGION", REGION)  # for a base_url that does not name one
    return BedrockDialect("b", provider(**{"api_key": "", **extra}))


def test_sigv4_signature_is_botocore_s_and_covers_the_configured_headers(monkeypatch) -> None:
    dialect = sigv4_dialect(monkeypatch, headers={"X-Team": "search", "Content-Type": "text/x"})
    url, headers, body = signed(dialect, {"messages": HELLO})
    assert verify(url, headers, body) == "sigv4"
    authorization = headers["Authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={KEY}/")
    assert f"/{REGION}/bedrock/aws4_request" in authorization
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-team," in (
        authorization
    )
    assert headers["Content-Type"] == "application/json"  # Berry's own, not the configured one
    assert headers["X-Amz-Security-Token"] == SESSION_TOKEN
    assert headers["Host"] == f"bedrock-runtime.{REGION}.amazonaws.com"
    assert url.endswith("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse")
    # The configured header is signed: changing it on the way breaks the signature.
    tampered = {**headers, "X-Team": "other"}
    with pytest.raises(Exception, match="signature"):
        verify(url, tampered, body)
    with pytest.raises(Exception, match="signature"):
        verify(url, headers, body + b" ")


def test_an_api_key_is_a_bearer_token_and_nothing_is_signed() -> None:
    dialect = BedrockDialect("b", provider(headers={"X-Team": "search"}))
    assert dialect.signer is None
    _, headers, _ = signed(dialect, {"messages": HELLO})
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["X-Team"] == "search"
    assert "X-Amz-Date" not in headers and "X-Amz-Security-Token" not in headers


def test_without_credentials_the_backend_fails_as_auth_before_sending(monkeypatch) -> None:
    monkeypatch.setattr(
        "berry_shared.dialects.bedrock.CredentialSource.from_default_chain",
        classmethod(lambda cls: CredentialSource(None)),
    )
    dialect = BedrockDialect("b", provider(api_key=""))
    with pytest.raises(AttemptFailed) as failed:
        signed(dialect, {"messages": HELLO})
    assert failed.value.error is ErrorClass.AUTH
    assert failed.value.detail == "no AWS credentials found"


class Clock:
    """The time botocore's RefreshableCredentials sees (its ``time_fetcher``)."""

    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


def refreshable(
    lifetime: datetime.timedelta, sets: list[tuple[str, str, str]], clock: Clock
) -> tuple[Any, list[str]]:
    """RefreshableCredentials: the first of ``sets`` valid for ``lifetime``, each refresh
    handing out the next one, valid for an hour."""
    calls: list[str] = []

    def refresh() -> dict[str, str]:
        key, secret, token = sets[min(len(calls) + 1, len(sets) - 1)]
        calls.append(key)
        expiry = clock() + datetime.timedelta(hours=1)
        return {
            "access_key": key,
            "secret_key": secret,
            "token": token,
            "expiry_time": expiry.isoformat(),
        }

    key, secret, token = sets[0]
    credentials = RefreshableCredentials(
        key, secret, token, clock() + lifetime, refresh, "test", time_fetcher=clock
    )
    return credentials, calls


ROTATION = [
    ("AKIAOLD0000000000001", "old-secret-0123456789", "old-token-0123456789"),
    ("AKIANEW0000000000002", "new-secret-0123456789", "new-token-0123456789"),
]


def test_credentials_nearing_expiry_are_refreshed_on_a_thread_while_the_valid_set_signs() -> None:
    clock = Clock()
    credentials, calls = refreshable(datetime.timedelta(hours=1), ROTATION, clock)
    source = CredentialSource(credentials)
    assert source.frozen().access_key == "AKIAOLD0000000000001"
    assert calls == []
    # 12 minutes left: inside botocore's advisory window (15), outside the mandatory one (10).
    clock.now += datetime.timedelta(minutes=48)
    assert source.frozen().access_key == "AKIAOLD0000000000001"  # signing did not wait
    deadline = time.monotonic() + 5
    while source.frozen().access_key != "AKIANEW0000000000002":
        assert time.monotonic() < deadline, "the background refresh never happened"
        time.sleep(0.01)
    assert calls == ["AKIANEW0000000000002"]  # one refresh, not one per signature
    # The rotated-out secret is still scrubbed from provider text for a while.
    assert {b"old-secret-0123456789", b"new-secret-0123456789"} <= set(source.secrets())


def test_credentials_about_to_expire_are_refreshed_before_signing() -> None:
    credentials, calls = refreshable(datetime.timedelta(minutes=5), ROTATION, Clock())
    source = CredentialSource(credentials)
    signer = SigV4Signer(REGION, source)
    headers = {"Host": "h", "Content-Type": "application/json"}
    assert signer.sign("https://h/model/m/converse", headers, b"{}")
    assert "Credential=AKIANEW0000000000002/" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "new-token-0123456789"
    assert calls == ["AKIANEW0000000000002"]


def test_static_credentials_are_frozen_per_signature() -> None:
    credentials = Credentials(KEY, SECRET, None)
    source = CredentialSource(credentials)
    assert source.frozen().secret_key == SECRET
    credentials.secret_key = "rotated-by-someone-0123"  # a mutable set: never cached for ever
    assert source.frozen().secret_key == "rotated-by-someone-0123"


# --- Answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons_become_finish_reasons(stop_reason: str, expected: str) -> None:
    assert finish_reason(stop_reason) == expected


def test_a_converse_answer_becomes_an_openai_completion() -> None:
    answer = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "hmm"}}},
                    {"text": "Checking. "},
                    {"text": "One moment."},
                    {
                        "toolUse": {
                            "toolUseId": "tooluse_1",
                            "name": "get_weather",
                            "input": {"city": "Oslo"},
                        }
                    },
                ],
            }
        },
        "stopReason": "tool_use",
        "usage": {
            "inputTokens": 10,
            "outputTokens": 5,
            "totalTokens": 115,
            "cacheReadInputTokens": 100,
        },
        "metrics": {"latencyMs": 12},
    }
    result = completion(orjson.dumps(answer), chat_request({"messages": HELLO}))
    body = orjson.loads(result.body)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == PUBLIC
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking. One moment.",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "tooluse_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    # inputTokens leaves the cached part out; OpenAI's prompt_tokens includes it.
    assert body["usage"] == {
        "prompt_tokens": 110,
        "completion_tokens": 5,
        "total_tokens": 115,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    assert result.usage == Usage(110, 5, 100)
    assert converse_usage({"inputTokens": 3, "outputTokens": 2, "cacheWriteInputTokens": 7}) == (
        Usage(10, 2, 0)
    )


def test_a_body_that_is_not_a_converse_answer_fails_over() -> None:
    for body in (b"not json", b"[]", b'{"output": {}}'):
        with pytest.raises(AttemptFailed):
            completion(body, chat_request({"messages": HELLO}))


def error(name: str, message: str, status: int) -> tuple[int, dict[str, str], bytes]:
    headers = {"x-amzn-ErrorType": f"{name}:{BEDROCK_ERROR_NAMESPACE}"}
    return status, headers, orjson.dumps({"message": message})


@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [
        ("ThrottlingException", 429, ErrorClass.RATE_LIMIT),
        ("ServiceUnavailableException", 503, ErrorClass.SERVER),
        ("ModelNotReadyException", 429, ErrorClass.SERVER),
        ("InternalServerException", 500, ErrorClass.SERVER),
        ("ModelErrorException", 424, ErrorClass.SERVER),
        ("ModelTimeoutException", 408, ErrorClass.TIMEOUT),
        ("ServiceQuotaExceededException", 400, ErrorClass.RATE_LIMIT),
        ("ResourceNotFoundException", 404, ErrorClass.MODEL),
        ("AccessDeniedException", 403, ErrorClass.AUTH),
        ("UnrecognizedClientException", 403, ErrorClass.AUTH),
        ("InvalidSignatureException", 403, ErrorClass.AUTH),
        ("ExpiredTokenException", 403, ErrorClass.AUTH),
    ],
)
def test_bedrock_errors_fail_over_by_class(name: str, status: int, expected: ErrorClass) -> None:
    failure = BedrockDialect("b", provider()).failure(*error(name, "it broke", status))
    assert isinstance(failure, AttemptFailed)
    assert failure.error is expected
    assert failure.detail.startswith(f"{name} (HTTP {status})")


def test_a_validation_exception_is_the_client_s_mistake_with_bedrock_s_message() -> None:
    dialect = BedrockDialect("b", provider())
    mistake = dialect.failure(*error("ValidationException", "maxTokens is too large", 400))
    assert isinstance(mistake, ClientMistake) and mistake.status == 400
    assert orjson.loads(mistake.body) == {
        "error": {
            "message": "maxTokens is too large",
            "type": "invalid_request_error",
            "param": None,
            "code": "upstream_rejected_request",
        }
    }
    # ... unless it says the configured model id is wrong: then this backend cannot serve.
    bad_model = dialect.failure(
        *error("ValidationException", "The provided model identifier is invalid.", 400)
    )
    assert isinstance(bad_model, AttemptFailed) and bad_model.error is ErrorClass.MODEL


def test_error_names_come_from_the_header_or_the_body() -> None:
    assert error_name({"x-amzn-ErrorType": "ThrottlingException:http://x/"}, b"") == (
        "ThrottlingException"
    )
    assert error_name({}, b'{"__type": "com.amazon.coral.service#ExpiredTokenException"}') == (
        "ExpiredTokenException"
    )
    assert error_name({}, b"<html>") == ""


# --- Event-stream decoding --------------------------------------------------------------------


def stream_frames(*, tools: bool = False) -> list[bytes]:
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    if tools:
        events += [
            ("contentBlockDelta", {"delta": {"text": "Let me check."}, "contentBlockIndex": 0}),
            ("contentBlockStop", {"contentBlockIndex": 0}),
            (
                "contentBlockStart",
                {
                    "start": {"toolUse": {"toolUseId": "tu_1", "name": "get_weather"}},
                    "contentBlockIndex": 1,
                },
            ),
            (
                "contentBlockDelta",
                {"delta": {"toolUse": {"input": '{"city":'}}, "contentBlockIndex": 1},
            ),
            (
                "contentBlockDelta",
                {"delta": {"toolUse": {"input": '"Oslo"}'}}, "contentBlockIndex": 1},
            ),
            ("contentBlockStop", {"contentBlockIndex": 1}),
            ("messageStop", {"stopReason": "tool_use"}),
        ]
    else:
        events += [
            ("contentBlockDelta", {"delta": {"text": "Hel"}, "contentBlockIndex": 0}),
            (
                "contentBlockDelta",
                {"delta": {"reasoningContent": {"text": "x"}}, "contentBlockIndex": 0},
            ),
            ("contentBlockDelta", {"delta": {"text": "lo"}, "contentBlockIndex": 0}),
            ("contentBlockStop", {"contentBlockIndex": 0}),
            ("messageStop", {"stopReason": "end_turn"}),
        ]
    events.append(
        (
            "metadata",
            {
                "usage": {"inputTokens": 4, "outputTokens": 2, "totalTokens": 6},
                "metrics": {"latencyMs": 1},
            },
        )
    )
    return [event_frame(name, body, pad=index) for index, (name, body) in enumerate(events)]


def sse_payloads(data: bytes) -> list[Any]:
    events = [e for e in data.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[6:] if e == "data: [DONE]" else orjson.loads(e[6:]) for e in events]


def decoder(include_usage: bool = True) -> Any:
    chat = chat_request(
        {"messages": HELLO, "stream": True, "stream_options": {"include_usage": include_usage}}
    )
    return BedrockDialect("b", provider()).stream_decoder(chat)


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_stream_fed_byte_by_byte_becomes_openai_chunks(include_usage: bool) -> None:
    stream = decoder(include_usage)
    out = b"".join(stream.feed(bytes([byte])) for byte in b"".join(stream_frames()))
    out += stream.finish()
    payloads = sse_payloads(out)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["delta"] for c in chunks[:4]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:4]] == [None, None, None, "stop"]
    if include_usage:
        assert chunks[4]["choices"] == []
        assert chunks[4]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert len(chunks) == (5 if include_usage else 4)
    assert stream.usage == Usage(4, 2)


def test_streamed_tool_calls_become_tool_call_deltas() -> None:
    stream = decoder(include_usage=False)
    out = b"".join(stream.feed(frame) for frame in stream_frames(tools=True)) + stream.finish()
    deltas = [c["choices"][0]["delta"] for c in sse_payloads(out)[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Let me check."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "tu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
        {},
    ]
    assert sse_payloads(out)[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_corrupt_crc_breaks_the_stream() -> None:
    frames = stream_frames()
    broken = bytearray(frames[2])
    broken[-1] ^= 0xFF  # the message CRC
    stream = decoder()
    assert stream.feed(frames[0] + frames[1])
    with pytest.raises(StreamBroken, match="ChecksumMismatch"):
        stream.feed(bytes(broken))
    prelude = bytearray(frames[0])
    prelude[9] ^= 0x01  # the prelude CRC
    with pytest.raises(FrameError):
        FrameDecoder().feed(bytes(prelude))


def test_a_stream_that_ends_early_is_broken() -> None:
    frames = stream_frames()
    inside_a_frame = decoder()
    inside_a_frame.feed(frames[0] + frames[1] + frames[2][:7])
    with pytest.raises(StreamBroken, match="inside an event frame"):
        inside_a_frame.finish()
    before_stop = decoder()
    before_stop.feed(b"".join(frames[:3]))
    with pytest.raises(StreamBroken, match="before messageStop"):
        before_stop.finish()


def test_exception_events_fail_over_before_any_content_and_break_the_stream_after() -> None:
    frames = stream_frames()
    early = decoder()
    with pytest.raises(StreamBroken) as raised:
        early.feed(frames[0] + exception_frame("throttlingException", "Too many requests"))
    assert raised.value.error is ErrorClass.RATE_LIMIT
    # Content and the exception in one read: the content is relayed, the error comes next.
    late = decoder()
    out = late.feed(frames[0] + frames[1] + exception_frame("modelStreamErrorException", "boom"))
    assert [c["choices"][0]["delta"] for c in sse_payloads(out)][-1] == {"content": "Hel"}
    with pytest.raises(StreamBroken, match="modelStreamErrorException: boom"):
        late.finish()
    client_mistake = decoder()
    with pytest.raises(ClientMistake) as mistake:
        client_mistake.feed(frames[0] + exception_frame("validationException", "Input is too long"))
    assert orjson.loads(mistake.value.body)["error"]["message"] == "Input is too long"


# --- Environment and servers -------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch, tmp_path: Path) -> None:
    """AWS settings from this test only: the fake's keys with a session token."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)


def raw_paths(fake: FakeBedrock) -> list[bytes]:
    """Each request's path exactly as it came over the wire."""
    return [seen.raw_path for seen in fake.recorder.requests]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrock]:
    # One server for the module keeps the file fast; each test resets it (fixture below).
    server = FakeBedrock(session_token=SESSION_TOKEN, api_key=API_KEY)
    with server:
        yield server


@pytest.fixture
def bedrock(fake: FakeBedrock) -> FakeBedrock:
    fake.reset()
    fake.app.auth = AuthConfig(REGION, KEY, SECRET, SESSION_TOKEN, API_KEY)
    return fake


def berry_config(
    base_url: str,
    *,
    api_key: str = "",
    model: str = MODEL,
    backup: DemoUpstream | None = None,
    headers: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
) -> Config:
    providers: dict[str, Any] = {
        "bedrock": {
            "name": "Bedrock",
            "base_url": base_url,
            "api_key": api_key,
            "models": [model],
            "backend_type": "bedrock",
            "headers": headers or {},
        }
    }
    backends: list[dict[str, Any]] = [{"provider": "bedrock", "model": model}]
    if backup is not None:
        providers["backup"] = demo_provider(backup, "backup")
        backends.append({"provider": "backup", "model": "up-model", "priority": 1})
    return one_model_config(providers, backends, settings=settings)


StartBerry = Callable[[Config], Berry]


def last_error(berry: Berry) -> ErrorClass | None:
    """The Bedrock backend's last error class, once a stream that broke has been recorded
    (after its error event reached the client, so it may take a moment)."""
    deadline = time.monotonic() + 5
    while (error := berry.state(f"bedrock:{MODEL}").last_error) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    return error


@pytest.fixture
def sigv4_berry(aws_env: None, bedrock: FakeBedrock, start_berry: StartBerry) -> Berry:
    """Berry with one Bedrock backend signed with the environment's credentials."""
    return start_berry(berry_config(bedrock.root_url))


# --- Hypothesis: every valid OpenAI body becomes a Converse request the fake accepts ---------


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=chat_bodies(model=PUBLIC), model=st.sampled_from([MODEL, PROFILE_ARN]))
def test_random_openai_bodies_become_converse_requests_the_fake_accepts(
    bedrock: FakeBedrock, monkeypatch, body: dict[str, Any], model: str
) -> None:
    dialect = sigv4_dialect(monkeypatch, base_url=bedrock.root_url)
    chat = chat_request(body)
    fetches_images = any(
        isinstance(part, dict)
        and part.get("type") == "image_url"
        and part["image_url"]["url"].startswith("https:")
        for message in chat.messages
        for part in (message["content"] if isinstance(message.get("content"), list) else ())
    )
    try:
        request = dialect.chat_request(chat, model)
    except Unsupported as unsupported:
        assert fetches_images, unsupported.message  # the one thing Bedrock cannot take
        return
    assert not fetches_images
    response = HTTP.post(str(request.url), content=request.body, headers=dict(request.headers))
    assert response.status_code == 200, (response.text, orjson.loads(request.body))
    if chat.stream:
        assert response.headers["content-type"] == EVENT_STREAM_CONTENT_TYPE
        stream = dialect.stream_decoder(chat)
        out = stream.feed(response.content) + stream.finish()
        assert out.endswith(b"data: [DONE]\n\n")
    else:
        answer = orjson.loads(dialect.completion(response.content, "application/json", chat).body)
        assert answer["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


# --- End to end: Berry with the openai SDK ------------------------------------------------------


def test_non_stream_chat_through_berry(sigv4_berry: Berry, bedrock: FakeBedrock) -> None:
    raw = berry_client(sigv4_berry).chat.completions.with_raw_response.create(
        model=PUBLIC,
        messages=HELLO,
        max_tokens=100,
        temperature=0.2,  # type: ignore[arg-type]
    )
    answer = raw.parse()
    assert raw.headers["x-berry-backend"] == f"bedrock:{MODEL}"
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.content == TEXT
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 4)
    (call,) = bedrock.calls
    assert (call.operation, call.model_id, call.auth) == ("Converse", MODEL, "sigv4")
    assert call.seen.json["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.2}
    assert call.seen.headers["x-amz-security-token"] == SESSION_TOKEN  # from the environment
    # The path on the wire is boto3's: ":" percent-encoded, and that is what was signed.
    assert raw_paths(bedrock) == [boto3_path(MODEL, False).encode()]


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_through_berry(
    sigv4_berry: Berry, bedrock: FakeBedrock, include_usage: bool
) -> None:
    bedrock.behaviour.split_delay_ms = 30  # the frame split in two arrives in two reads
    options = {"include_usage": True} if include_usage else None
    chunks = list(
        berry_client(sigv4_berry).chat.completions.create(
            model=PUBLIC,
            messages=HELLO,
            stream=True,
            stream_options=options,  # type: ignore[arg-type]
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        (last,) = usage_chunks
        assert last is chunks[-1] and last.choices == []
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 4)  # type: ignore[union-attr]
    else:
        assert usage_chunks == []
    (call,) = bedrock.calls
    assert call.operation == "ConverseStream"


def test_a_tool_round_trip_through_berry(sigv4_berry: Berry, bedrock: FakeBedrock) -> None:
    sdk = berry_client(sigv4_berry)
    messages: list[Any] = [{"role": "user", "content": "weather in Oslo?"}]
    first = sdk.chat.completions.create(model=PUBLIC, messages=messages, tools=[WEATHER, TIME])  # type: ignore[list-item]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == WEATHER_ARGS
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    second = sdk.chat.completions.create(model=PUBLIC, messages=messages, tools=[WEATHER, TIME])  # type: ignore[list-item]
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == f'{TEXT} The tool returned: {{"temperature":21}}'
    sent = bedrock.calls[-1].seen.json["messages"]
    assert sent[1]["content"][0]["toolUse"]["toolUseId"] == call.id
    assert sent[2]["content"] == [
        {"toolResult": {"toolUseId": call.id, "content": [{"json": {"temperature": 21}}]}}
    ]


def test_streamed_tool_calls_through_berry(sigv4_berry: Berry, bedrock: FakeBedrock) -> None:
    bedrock.behaviour.two_tool_calls = True
    bedrock.behaviour.tool_preamble = "Checking both."
    chunks = list(
        berry_client(sigv4_berry).chat.completions.create(
            model=PUBLIC,
            messages=HELLO,
            tools=[WEATHER, TIME],
            stream=True,  # type: ignore[list-item]
        )
    )
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.id or ""
            assert delta.function is not None
            entry["name"] += delta.function.name or ""
            entry["arguments"] += delta.function.arguments or ""
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert orjson.loads(calls[0]["arguments"]) == WEATHER_ARGS
    assert orjson.loads(calls[1]["arguments"]) == {}
    assert all(c["id"].startswith("tooluse_") for c in calls.values())
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Checking both."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("throttled", ErrorClass.RATE_LIMIT),
        ("unavailable", ErrorClass.SERVER),
        ("not_ready", ErrorClass.SERVER),
        ("internal", ErrorClass.SERVER),
        ("access_denied", ErrorClass.AUTH),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_failures_fail_over_to_another_backend(
    aws_env: None,
    bedrock: FakeBedrock,
    make_upstream: Callable[..., DemoUpstream],
    start_berry: StartBerry,
    mode: str,
    error: ErrorClass,
    stream: bool,
) -> None:
    backup = make_upstream(name="backup")
    berry = start_berry(berry_config(bedrock.root_url, backup=backup))
    bedrock.behaviour.mode = mode
    raw = berry_client(berry).chat.completions.with_raw_response.create(
        model=PUBLIC,
        messages=HELLO,
        stream=stream,  # type: ignore[arg-type]
    )
    assert raw.headers["x-berry-backend"] == "backup:up-model"
    assert raw.headers["x-berry-attempts"] == "2"
    answer = raw.parse()
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices)  # type: ignore[union-attr]
    else:
        assert answer.choices[0].message.content  # type: ignore[union-attr]
    assert len(bedrock.calls) == 1  # Bedrock was tried first
    assert berry.state(f"bedrock:{MODEL}").last_error is error


def test_a_validation_exception_comes_back_openai_shaped_without_failover(
    aws_env: None,
    bedrock: FakeBedrock,
    make_upstream: Callable[..., DemoUpstream],
    start_berry: StartBerry,
) -> None:
    backup = make_upstream(name="backup")
    berry = start_berry(berry_config(bedrock.root_url, backup=backup))
    bedrock.behaviour.mode = "validation"
    bedrock.behaviour.error_message = "Malformed input request: the prompt is not valid."
    with pytest.raises(openai.BadRequestError) as raised:
        berry_client(berry).chat.completions.create(model=PUBLIC, messages=HELLO)  # type: ignore[arg-type]
    assert raised.value.status_code == 400
    assert raised.value.body == {  # type: ignore[comparison-overlap]
        "message": "Malformed input request: the prompt is not valid.",
        "type": "invalid_request_error",
        "param": None,
        "code": "upstream_rejected_request",
    }
    assert backup.stats()["requests"] == 0


def test_a_mid_stream_exception_ends_the_stream_with_berry_s_error_event(
    sigv4_berry: Berry, bedrock: FakeBedrock
) -> None:
    bedrock.behaviour.mode = "stream_error"
    bedrock.behaviour.fail_after_events = 2  # messageStart and the first text delta
    bedrock.behaviour.event_delay_ms = 50  # the exception arrives in a later read
    stream = berry_client(sigv4_berry).chat.completions.create(
        model=PUBLIC,
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
    )
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) and TEXT.startswith("".join(received))
    assert "stopped before the answer was complete" in raised.value.message
    assert "modelStreamErrorException" in raised.value.message
    assert raised.value.body["code"] == "stream_interrupted"  # type: ignore[index]
    assert last_error(sigv4_berry) is ErrorClass.SERVER


def test_an_exception_event_before_any_content_fails_over(
    aws_env: None,
    bedrock: FakeBedrock,
    make_upstream: Callable[..., DemoUpstream],
    start_berry: StartBerry,
) -> None:
    backup = make_upstream(name="backup")
    berry = start_berry(berry_config(bedrock.root_url, backup=backup))
    bedrock.behaviour.mode = "stream_error"
    bedrock.behaviour.stream_error_type = "throttlingException"
    bedrock.behaviour.fail_after_events = 1  # only messageStart
    raw = berry_client(berry).chat.completions.with_raw_response.create(
        model=PUBLIC,
        messages=HELLO,
        stream=True,  # type: ignore[arg-type]
    )
    assert raw.headers["x-berry-backend"] == "backup:up-model"
    assert berry.state(f"bedrock:{MODEL}").last_error is ErrorClass.RATE_LIMIT


class FrameServer:
    """Serves a fixed ConverseStream, one write per frame with a pause between them."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        headers = [(b"content-type", EVENT_STREAM_CONTENT_TYPE.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for frame in self.frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_a_corrupt_frame_mid_stream_ends_the_stream_as_a_failure(start_berry: StartBerry) -> None:
    frames = stream_frames()
    corrupt = bytearray(frames[3])
    corrupt[len(corrupt) // 2] ^= 0x55  # a payload byte: the message CRC no longer matches
    with ThreadedServer(FrameServer([*frames[:3], bytes(corrupt), *frames[4:]])) as server:
        berry = start_berry(berry_config(server.root_url, api_key=API_KEY))
        stream = berry_client(berry).chat.completions.create(
            model=PUBLIC,
            messages=HELLO,  # type: ignore[arg-type]
            stream=True,
        )
        received = []
        with pytest.raises(openai.APIError) as raised:
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hel"
    assert "malformed event stream (ChecksumMismatch)" in raised.value.message
    assert last_error(berry) is ErrorClass.SERVER


def test_credentials_from_the_environment(
    aws_env: None, bedrock: FakeBedrock, start_berry: StartBerry, monkeypatch
) -> None:
    berry = start_berry(berry_config(bedrock.root_url, headers={"X-Team": "search"}))
    answer = berry_client(berry).chat.completions.create(model=PUBLIC, messages=HELLO)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == TEXT
    (call,) = bedrock.calls
    assert call.auth == "sigv4"
    assert call.seen.headers["x-team"] == "search"
    assert "x-team" in call.seen.headers["authorization"]  # among the signed headers
    # The same Berry code with other keys in the environment is refused: the keys are used.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    other = start_berry(berry_config(bedrock.root_url))
    with pytest.raises(openai.APIStatusError) as raised:
        berry_client(other).chat.completions.create(model=PUBLIC, messages=HELLO)  # type: ignore[arg-type]
    assert raised.value.status_code == 502
    assert "InvalidSignatureException (HTTP 403)" in raised.value.message
    assert other.state(f"bedrock:{MODEL}").last_error is ErrorClass.AUTH


HOUR = datetime.timedelta(hours=1)


class CredentialEndpoint:
    """A container credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI): the first set it
    hands out expires two seconds after botocore's 15-minute advisory refresh window begins,
    the next ones in an hour."""

    def __init__(self, sets: list[tuple[str, str, str]]) -> None:
        self.sets = sets
        self.hits = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        key, secret, token = self.sets[min(self.hits, len(self.sets) - 1)]
        lifetime = datetime.timedelta(minutes=15, seconds=2) if self.hits == 0 else HOUR
        self.hits += 1
        expiry = datetime.datetime.now(datetime.UTC) + lifetime
        body = {
            "AccessKeyId": key,
            "SecretAccessKey": secret,
            "Token": token,
            "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        await send_bytes(send, 200, orjson.dumps(body))


def test_container_credentials_are_refreshed_before_they_expire(
    aws_env: None, bedrock: FakeBedrock, start_berry: StartBerry, monkeypatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    endpoint = CredentialEndpoint(ROTATION)
    with ThreadedServer(endpoint) as server:
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{server.root_url}/creds")
        old_key, old_secret, old_token = ROTATION[0]
        bedrock.app.auth = AuthConfig(REGION, old_key, old_secret, old_token, None)
        berry = start_berry(berry_config(bedrock.root_url))
        assert endpoint.hits == 1  # loaded at start-up, not on the first request
        sdk = berry_client(berry)
        assert sdk.chat.completions.create(model=PUBLIC, messages=HELLO).choices  # type: ignore[arg-type]
        assert endpoint.hits == 1  # a quarter of an hour left: no refresh yet
        time.sleep(3)  # now less than 15 minutes are left
        assert sdk.chat.completions.create(model=PUBLIC, messages=HELLO).choices  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while endpoint.hits < 2:  # that request noticed, and a thread asked for new keys
            assert time.monotonic() < deadline, "the credentials were never refreshed"
            time.sleep(0.02)
        new_key, new_secret, new_token = ROTATION[1]
        bedrock.app.auth = AuthConfig(REGION, new_key, new_secret, new_token, None)
        # The refresh thread stores the new set just after the endpoint answered.
        for _ in range(50):
            bedrock.calls.clear()
            try:
                sdk.chat.completions.create(model=PUBLIC, messages=HELLO)  # type: ignore[arg-type]
                break
            except openai.APIStatusError:
                time.sleep(0.05)
        assert bedrock.calls[-1].error is None
        assert bedrock.calls[-1].seen.headers["x-amz-security-token"] == new_token
        assert endpoint.hits == 2


def test_a_bearer_api_key(bedrock: FakeBedrock, start_berry: StartBerry, monkeypatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)  # no region, no credentials: none needed for a key
    berry = start_berry(berry_config(bedrock.root_url, api_key=API_KEY))
    answer = berry_client(berry).chat.completions.create(model=PUBLIC, messages=HELLO)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == TEXT
    (call,) = bedrock.calls
    assert call.auth == "bearer"
    assert call.seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert "x-amz-date" not in call.seen.headers


def test_model_ids_with_colons_and_inference_profile_arns_reach_bedrock(
    aws_env: None, bedrock: FakeBedrock, start_berry: StartBerry
) -> None:
    berry = start_berry(berry_config(bedrock.root_url, model=PROFILE_ARN))
    sdk = berry_client(berry)
    assert sdk.chat.completions.create(model=PUBLIC, messages=HELLO).choices  # type: ignore[arg-type]
    assert list(sdk.chat.completions.create(model=PUBLIC, messages=HELLO, stream=True))  # type: ignore[arg-type]
    assert [call.model_id for call in bedrock.calls] == [PROFILE_ARN, PROFILE_ARN]
    assert all(call.auth == "sigv4" for call in bedrock.calls)
    assert raw_paths(bedrock) == [
        boto3_path(PROFILE_ARN, False).encode(),
        boto3_path(PROFILE_ARN, True).encode(),
    ]


def test_probes_work_for_bedrock_backends(aws_env: None, bedrock: FakeBedrock) -> None:
    gateway = Gateway(berry_config(bedrock.root_url))
    (backend,) = gateway.config.models["test-model"].backends

    async def probe_twice() -> tuple[Any, Any]:
        try:
            healthy = await gateway.prober.probe(backend, "idle")
            bedrock.behaviour.mode = "access_denied"
            denied = await gateway.prober.probe(backend, "recovery")
            return healthy, denied
        finally:
            await gateway.close()

    healthy, denied = asyncio.run(probe_twice())
    assert healthy.ok and healthy.error is None
    assert not denied.ok and denied.error is ErrorClass.AUTH
    first = bedrock.calls[0]
    assert (first.operation, first.auth) == ("Converse", "sigv4")
    assert first.seen.json["inferenceConfig"] == {"maxTokens": 1}


def test_no_aws_secret_in_any_answer_log_or_metric(
    aws_env: None,
    bedrock: FakeBedrock,
    start_berry: StartBerry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    # Many failures in a row: circuits stay closed so that every request reaches Bedrock.
    lenient = {"circuit_breaker_failure_threshold": 100}
    signed = start_berry(berry_config(bedrock.root_url, settings=lenient))
    keyed = start_berry(berry_config(bedrock.root_url, api_key=API_KEY, settings=lenient))

    def ask(berry: Berry, stream: bool) -> None:
        body = {"model": PUBLIC, "messages": HELLO, "stream": stream}
        response = HTTP.post(
            f"{berry.base_url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {USER_TOKEN}"},
        )
        seen.extend([response.text, repr(dict(response.headers))])

    # A provider message that echoes the credentials the request carried.
    echoes = {signed: f"echo {SECRET} and {SESSION_TOKEN} end", keyed: f"echo {API_KEY} end"}
    situations: list[dict[str, Any]] = [
        {},
        {"mode": "validation"},
        {"mode": "access_denied"},
        {"mode": "throttled"},
        {"mode": "internal"},
        {"mode": "stream_error", "event_delay_ms": 20},
        {"mode": "stream_error", "fail_after_events": 1},
        {
            "mode": "stream_error",
            "stream_error_type": "validationException",
            "fail_after_events": 1,
        },
    ]
    for situation in situations:
        for berry, echo in echoes.items():
            defaults = Behaviour()
            for field in ("event_delay_ms", "fail_after_events", "stream_error_type"):
                setattr(bedrock.behaviour, field, getattr(defaults, field))
            bedrock.behaviour.mode = "ok"
            for field, value in {**situation, "error_message": echo}.items():
                setattr(bedrock.behaviour, field, value)
            for stream in (False, True):
                ask(berry, stream)
    statuses = {call.error for call in bedrock.calls}
    assert {None, "ValidationException", "AccessDeniedException"} <= statuses
    # A signature the fake cannot verify: its answer echoes the canonical request, which holds
    # the session token (as the real service's does).
    bedrock.app.auth = AuthConfig(
        REGION, KEY, "some-other-secret-0123456789", SESSION_TOKEN, API_KEY
    )
    ask(signed, False)
    assert bedrock.calls[-1].error == "InvalidSignatureException"
    assert SESSION_TOKEN in bedrock.calls[-1].seen.headers["x-amz-security-token"]
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for berry in (signed, keyed):
        for path in ("/prometheus", "/metrics", "/admin/backend-health", "/admin/system-stats"):
            response = HTTP.get(f"{berry.url}{path}", headers=admin)
            assert response.status_code == 200, (path, response.text)
            seen.append(response.text)
    everything = "\n".join([*seen, caplog.text])
    # The echoes were there, and were scrubbed.
    assert "echo [redacted] and [redacted] end" in everything
    assert "echo [redacted] end" in everything
    assert "upstream_rejected_request" in everything and "stream_interrupted" in everything
    for secret in SECRETS:
        assert secret not in everything, secret
    # The secrets were in use (so their absence above means something).
    bearer = [c for c in bedrock.calls if c.auth == "bearer"]
    assert bearer and bearer[0].seen.headers["authorization"] == f"Bearer {API_KEY}"


def test_build_dialects_picks_the_bedrock_dialect(aws_env: None) -> None:
    dialects = build_dialects({"b": provider(), "s": provider(api_key="")})
    assert isinstance(dialects["b"], BedrockDialect) and dialects["b"].signer is None
    signer = dialects["s"].signer  # type: ignore[attr-defined]
    assert signer is not None and signer.region == REGION
    assert signer.credentials.frozen().token == SESSION_TOKEN  # the default chain: env


def test_the_fake_s_frames_carry_real_crcs() -> None:
    # The fake's frames carry real CRC32s: a decoder that ignored them would pass the corrupt
    # frame tests above for the wrong reason.
    frame = stream_frames()[0]
    assert int.from_bytes(frame[-4:], "big") == zlib.crc32(frame[:-4])
