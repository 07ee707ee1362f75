"""The Bedrock Converse fake (local/fakes/bedrock.py), driven by boto3's bedrock-runtime client.

Everything goes over real HTTP on loopback: boto3 signs with SigV4 (or sends a Bedrock API
key), the fake verifies it, and boto3 parses the answers, the event stream and the errors. A
few requests that boto3 refuses to build (unknown members, raw ':' in the path, stale or
mis-scoped signatures) are signed with botocore's SigV4 code and sent with httpx.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import boto3
import botocore.exceptions
import httpx
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer, EventStreamMessage
from urllib3.exceptions import ProtocolError

import support  # noqa: F401  (puts local/ on sys.path)
from dialect_support import TIME_SCHEMA, WEATHER_INPUT, WEATHER_SCHEMA, wait_for
from fakes.bedrock import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_SECRET_ACCESS_KEY,
    EVENT_STREAM_CONTENT_TYPE,
    MSG_ALTERNATE,
    MSG_BAD_MODEL,
    MSG_START_WITH_USER,
    MSG_TOOL_CONFIG_REQUIRED,
    Behaviour,
    FakeBedrock,
    encode_event_frame,
    event_frame,
    exception_frame,
)

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE_ARN = (
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
    "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
)
HELLO = [{"role": "user", "content": [{"text": "say hello to me"}]}]
DEFAULT_TEXT = Behaviour().text
WEATHER_TOOL = {
    "toolSpec": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "inputSchema": {"json": WEATHER_SCHEMA},
    }
}
TIME_TOOL = {"toolSpec": {"name": "get_time", "inputSchema": {"json": TIME_SCHEMA}}}


def make_client(fake: FakeBedrock, **options: Any) -> Any:
    """A boto3 bedrock-runtime client aimed at the fake (no retries: one attempt each)."""
    config = options.pop("config", None) or Config(retries={"total_max_attempts": 1})
    kwargs: dict[str, Any] = {
        "region_name": fake.region,
        "endpoint_url": fake.root_url,
        "aws_access_key_id": DEFAULT_ACCESS_KEY_ID,
        "aws_secret_access_key": DEFAULT_SECRET_ACCESS_KEY,
        "config": config,
        **options,
    }
    return boto3.client("bedrock-runtime", **kwargs)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrock]:
    # One server for the module keeps the file fast; each test resets its state below.
    with FakeBedrock() as server:
        yield server


@pytest.fixture
def bedrock(fake: FakeBedrock) -> FakeBedrock:
    fake.reset()
    return fake


@pytest.fixture
def client(bedrock: FakeBedrock) -> Any:
    return make_client(bedrock)


def signed_post(
    fake: FakeBedrock,
    path: str,
    body: bytes,
    *,
    secret: str = DEFAULT_SECRET_ACCESS_KEY,
    service: str = "bedrock",
    region: str | None = None,
    at: datetime.datetime | None = None,
    stream: bool = False,
) -> httpx.Response:
    """POST ``body`` to ``path`` (sent exactly as given), SigV4-signed with botocore's code."""
    request = AWSRequest(
        method="POST",
        url=fake.root_url + path,
        data=body,
        headers={"Content-Type": "application/json"},
    )
    signer = SigV4Auth(Credentials(DEFAULT_ACCESS_KEY_ID, secret), service, region or fake.region)
    stamp = (at or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
    # add_auth() would stamp the current time: do its steps with our own timestamp.
    request.context["timestamp"] = stamp
    request.headers["X-Amz-Date"] = stamp
    canonical_request = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical_request), request)
    signed_headers = signer.signed_headers(signer.headers_to_sign(request))
    request.headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    headers = dict(request.headers.items())
    if not stream:
        return httpx.post(request.url, content=body, headers=headers, timeout=10)
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", request.url, content=body, headers=headers) as response,
    ):
        chunks = list(response.iter_raw())
        response.extensions["chunks"] = chunks
        return response


def converse_path(model_id: str, operation: str = "converse") -> str:
    return f"/model/{model_id}/{operation}"


def encoded(model_id: str) -> str:
    # What boto3 sends for the {modelId} label: every reserved character percent-encoded.
    return model_id.replace(":", "%3A").replace("/", "%2F")


def error_of(exc: botocore.exceptions.ClientError) -> tuple[str, int, str]:
    response = exc.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def parse_frames(data: bytes) -> list[EventStreamMessage]:
    buffer = EventStreamBuffer()  # checks both CRCs of every message
    buffer.add_data(data)
    return list(buffer)


def frame_json(frame: EventStreamMessage) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(frame.payload)
    return parsed


def stream_events(response: dict[str, Any]) -> list[dict[str, Any]]:
    return list(response["stream"])


# ----------------------------------------------------------------------------------------
# Converse
# ----------------------------------------------------------------------------------------


def test_converse_answers_text_with_usage_and_metrics(bedrock: FakeBedrock, client: Any) -> None:
    response = client.converse(modelId=MODEL, messages=HELLO)

    assert response["output"]["message"] == {
        "role": "assistant",
        "content": [{"text": DEFAULT_TEXT}],
    }
    assert response["stopReason"] == "end_turn"
    assert response["usage"] == {"inputTokens": 4, "outputTokens": 4, "totalTokens": 8}
    assert response["metrics"]["latencyMs"] >= 0
    assert response["ResponseMetadata"]["RequestId"]
    call = bedrock.calls[-1]
    assert (call.operation, call.model_id, call.auth, call.error) == (
        "Converse",
        MODEL,
        "sigv4",
        None,
    )
    seen = bedrock.recorder.last
    assert seen.wait_completed() and seen.json == {"messages": HELLO}
    assert seen.headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={DEFAULT_ACCESS_KEY_ID}/"
    )


def test_behaviour_text_is_the_answer(bedrock: FakeBedrock, client: Any) -> None:
    bedrock.behaviour.text = "Configured answer"
    response = client.converse(modelId=MODEL, messages=HELLO)
    assert response["output"]["message"]["content"] == [{"text": "Configured answer"}]


def test_system_prompt_is_accepted_and_counted(bedrock: FakeBedrock, client: Any) -> None:
    system = [{"text": "You are terse and polite"}]
    response = client.converse(modelId=MODEL, messages=HELLO, system=system)
    assert response["usage"]["inputTokens"] == 4 + 5
    assert bedrock.recorder.last.json["system"] == system


def test_multi_turn_conversation(bedrock: FakeBedrock, client: Any) -> None:
    messages = [
        *HELLO,
        {"role": "assistant", "content": [{"text": "Hello!"}]},
        {"role": "user", "content": [{"text": "and again"}]},
    ]
    response = client.converse(modelId=MODEL, messages=messages)
    assert response["stopReason"] == "end_turn"
    assert bedrock.recorder.last.json["messages"] == messages


def test_image_bytes_travel_base64_encoded(bedrock: FakeBedrock, client: Any) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    content = [
        {"text": "what is this?"},
        {"image": {"format": "png", "source": {"bytes": png}}},
    ]
    response = client.converse(modelId=MODEL, messages=[{"role": "user", "content": content}])
    assert response["stopReason"] == "end_turn"
    sent = bedrock.recorder.last.json["messages"][0]["content"][1]["image"]
    assert sent["format"] == "png"
    assert base64.b64decode(sent["source"]["bytes"]) == png


def test_stop_sequence_cuts_the_answer(client: Any) -> None:
    response = client.converse(
        modelId=MODEL, messages=HELLO, inferenceConfig={"stopSequences": ["fake"]}
    )
    assert response["output"]["message"]["content"] == [{"text": "Hello from"}]
    assert response["stopReason"] == "stop_sequence"


def test_max_tokens_cuts_the_answer(client: Any) -> None:
    response = client.converse(
        modelId=MODEL,
        messages=HELLO,
        inferenceConfig={"maxTokens": 2, "temperature": 0.5, "topP": 0.9},
    )
    assert response["output"]["message"]["content"] == [{"text": "Hello from"}]
    assert response["stopReason"] == "max_tokens"
    assert response["usage"]["outputTokens"] == 2


def test_cache_token_counts_are_parsed(bedrock: FakeBedrock, client: Any) -> None:
    bedrock.behaviour.cache_read_input_tokens = 7
    bedrock.behaviour.cache_write_input_tokens = 3
    usage = client.converse(modelId=MODEL, messages=HELLO)["usage"]
    assert usage["cacheReadInputTokens"] == 7
    assert usage["cacheWriteInputTokens"] == 3


@pytest.mark.parametrize("stop_reason", ["guardrail_intervened", "content_filtered"])
def test_forced_stop_reason(bedrock: FakeBedrock, client: Any, stop_reason: str) -> None:
    bedrock.behaviour.stop_reason = stop_reason
    assert client.converse(modelId=MODEL, messages=HELLO)["stopReason"] == stop_reason


@pytest.mark.parametrize("model_id", [MODEL, PROFILE_ARN])
def test_model_id_reaches_the_fake_decoded(
    bedrock: FakeBedrock, client: Any, model_id: str
) -> None:
    client.converse(modelId=model_id, messages=HELLO)
    client.converse_stream(modelId=model_id, messages=HELLO)["stream"].close()
    assert [c.model_id for c in bedrock.calls] == [model_id, model_id]
    assert [c.operation for c in bedrock.calls] == ["Converse", "ConverseStream"]


def test_model_id_with_a_raw_colon_is_accepted(bedrock: FakeBedrock) -> None:
    body = json.dumps({"messages": HELLO}).encode()
    response = signed_post(bedrock, converse_path(MODEL), body)
    assert response.status_code == 200, response.text
    assert bedrock.calls[-1].model_id == MODEL
    # The same id percent-encoded, as boto3 sends it, is the same model.
    assert signed_post(bedrock, converse_path(encoded(MODEL)), body).status_code == 200
    assert bedrock.calls[-1].model_id == MODEL


def test_an_arn_with_a_raw_slash_is_an_unknown_route(bedrock: FakeBedrock) -> None:
    body = json.dumps({"messages": HELLO}).encode()
    response = signed_post(bedrock, converse_path(PROFILE_ARN.replace(":", "%3A")), body)
    assert response.status_code == 404
    assert response.headers["x-amzn-errortype"].startswith("UnknownOperationException:")


def test_unknown_model_when_the_fake_lists_its_models(bedrock: FakeBedrock, client: Any) -> None:
    bedrock.behaviour.model_ids = [MODEL]
    client.converse(modelId=MODEL, messages=HELLO)
    with pytest.raises(client.exceptions.ValidationException) as caught:
        client.converse(modelId="amazon.nova-pro-v1:0", messages=HELLO)
    assert error_of(caught.value) == ("ValidationException", 400, MSG_BAD_MODEL)


# ----------------------------------------------------------------------------------------
# Tools
# ----------------------------------------------------------------------------------------


def test_tool_round_trip(bedrock: FakeBedrock, client: Any) -> None:
    tools = {"tools": [WEATHER_TOOL, TIME_TOOL]}
    question = [{"role": "user", "content": [{"text": "weather in Paris?"}]}]
    first = client.converse(modelId=MODEL, messages=question, toolConfig=tools)

    assert first["stopReason"] == "tool_use"
    [block] = first["output"]["message"]["content"]
    tool_use = block["toolUse"]
    assert tool_use["name"] == "get_weather"
    assert tool_use["input"] == WEATHER_INPUT
    assert tool_use["toolUseId"].startswith("tooluse_")

    results = [
        {
            "toolResult": {
                "toolUseId": tool_use["toolUseId"],
                "content": [{"json": {"temperature": 21}}, {"text": "sunny all day"}],
                "status": "success",
            }
        }
    ]
    conversation = [
        *question,
        first["output"]["message"],
        {"role": "user", "content": results},
    ]
    second = client.converse(modelId=MODEL, messages=conversation, toolConfig=tools)
    assert second["stopReason"] == "end_turn"
    [answer] = second["output"]["message"]["content"]
    assert '{"temperature":21}' in answer["text"]
    assert "sunny all day" in answer["text"]
    assert bedrock.recorder.last.json["messages"][2]["content"][0]["toolResult"]["content"][0] == {
        "json": {"temperature": 21}
    }


def test_tool_choice_names_the_tool_and_two_calls(bedrock: FakeBedrock, client: Any) -> None:
    bedrock.behaviour.two_tool_calls = True
    bedrock.behaviour.tool_preamble = "Let me check."
    tools = {"tools": [WEATHER_TOOL, TIME_TOOL], "toolChoice": {"tool": {"name": "get_time"}}}
    content = client.converse(modelId=MODEL, messages=HELLO, toolConfig=tools)["output"]["message"][
        "content"
    ]
    assert content[0] == {"text": "Let me check."}
    assert [b["toolUse"]["name"] for b in content[1:]] == ["get_time", "get_weather"]
    assert content[1]["toolUse"]["input"] == {"zone": "zone-value"}
    assert content[1]["toolUse"]["toolUseId"] != content[2]["toolUse"]["toolUseId"]


def test_tools_can_be_declined_unless_the_choice_forces_one(
    bedrock: FakeBedrock, client: Any
) -> None:
    bedrock.behaviour.use_tools = False
    response = client.converse(modelId=MODEL, messages=HELLO, toolConfig={"tools": [WEATHER_TOOL]})
    assert response["output"]["message"]["content"] == [{"text": DEFAULT_TEXT}]
    assert response["stopReason"] == "end_turn"
    forced = {"tools": [WEATHER_TOOL], "toolChoice": {"any": {}}}
    response = client.converse(modelId=MODEL, messages=HELLO, toolConfig=forced)
    assert response["stopReason"] == "tool_use"
    assert response["output"]["message"]["content"][0]["toolUse"]["input"] == WEATHER_INPUT


# ----------------------------------------------------------------------------------------
# ConverseStream
# ----------------------------------------------------------------------------------------


def test_stream_text_deltas_concatenate_to_the_converse_text(
    bedrock: FakeBedrock, client: Any
) -> None:
    whole = client.converse(modelId=MODEL, messages=HELLO)
    events = stream_events(client.converse_stream(modelId=MODEL, messages=HELLO))

    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and events[0]["messageStart"] == {"role": "assistant"}
    assert "contentBlockStart" not in kinds  # text blocks start with their first delta
    deltas = [e["contentBlockDelta"] for e in events if "contentBlockDelta" in e]
    assert len(deltas) == bedrock.behaviour.stream_chunks
    assert {d["contentBlockIndex"] for d in deltas} == {0}
    assert (
        "".join(d["delta"]["text"] for d in deltas)
        == (whole["output"]["message"]["content"][0]["text"])
    )
    assert kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    assert events[-2]["messageStop"] == {"stopReason": "end_turn"}
    assert events[-1]["metadata"]["usage"] == whole["usage"]
    assert events[-1]["metadata"]["metrics"]["latencyMs"] >= 0
    assert bedrock.recorder.last.wait_completed()


def test_stream_tool_input_fragments_concatenate_to_the_json(client: Any) -> None:
    events = stream_events(
        client.converse_stream(modelId=MODEL, messages=HELLO, toolConfig={"tools": [WEATHER_TOOL]})
    )
    [start] = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert start["contentBlockIndex"] == 0
    assert start["start"]["toolUse"]["name"] == "get_weather"
    assert start["start"]["toolUse"]["toolUseId"].startswith("tooluse_")
    fragments = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "contentBlockDelta" in e
    ]
    assert len(fragments) == 3
    assert json.loads("".join(fragments)) == WEATHER_INPUT
    stop = [e for e in events if "messageStop" in e]
    assert stop == [{"messageStop": {"stopReason": "tool_use"}}]


@pytest.mark.parametrize(
    "exception_type",
    [
        "throttlingException",
        "modelStreamErrorException",
        "internalServerException",
        "serviceUnavailableException",
        "validationException",
    ],
)
def test_mid_stream_exception_raises_while_iterating(
    bedrock: FakeBedrock, client: Any, exception_type: str
) -> None:
    bedrock.behaviour.mode = "stream_error"
    bedrock.behaviour.stream_error_type = exception_type
    bedrock.behaviour.error_message = "went wrong mid-stream"
    received: list[dict[str, Any]] = []
    stream = client.converse_stream(modelId=MODEL, messages=HELLO)["stream"]
    with pytest.raises(botocore.exceptions.EventStreamError) as caught:
        for event in stream:
            received.append(event)
    assert caught.value.response["Error"] == {
        "Code": exception_type,
        "Message": "went wrong mid-stream",
    }
    assert [next(iter(e)) for e in received] == ["messageStart", "contentBlockDelta"]


def test_stream_error_before_the_stream_is_a_client_exception(
    bedrock: FakeBedrock, client: Any
) -> None:
    bedrock.behaviour.mode = "throttled"
    with pytest.raises(client.exceptions.ThrottlingException):
        client.converse_stream(modelId=MODEL, messages=HELLO)


def test_cut_stream_breaks_the_iteration(bedrock: FakeBedrock, client: Any) -> None:
    bedrock.behaviour.mode = "cut"
    received: list[dict[str, Any]] = []
    stream = client.converse_stream(modelId=MODEL, messages=HELLO)["stream"]
    # botocore lets urllib3's error through while iterating an event stream.
    with pytest.raises((ProtocolError, botocore.exceptions.ResponseStreamingError)):
        for event in stream:
            received.append(event)
    assert [next(iter(e)) for e in received] == ["messageStart", "contentBlockDelta"]


def test_cut_converse_body_is_truncated(bedrock: FakeBedrock) -> None:
    bedrock.behaviour.mode = "cut"
    body = json.dumps({"messages": HELLO}).encode()
    # The whole length is announced and half of it sent (boto3 itself would silently parse
    # the truncated JSON as an empty answer, so the raw client shows the cut).
    with pytest.raises(httpx.RemoteProtocolError):
        signed_post(bedrock, converse_path(encoded(MODEL)), body)
    assert not bedrock.recorder.last.completed


def test_raw_stream_frames_are_well_formed(bedrock: FakeBedrock) -> None:
    # A delay between the two halves of the deliberately split frame makes that split reach
    # the client as two reads (it is there to exercise incremental decoders).
    bedrock.behaviour.split_delay_ms = 50
    body = json.dumps({"messages": HELLO}).encode()
    response = signed_post(
        bedrock, converse_path(encoded(MODEL), "converse-stream"), body, stream=True
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == EVENT_STREAM_CONTENT_TYPE
    chunks: list[bytes] = response.extensions["chunks"]
    frames = parse_frames(b"".join(chunks))

    assert [f.headers[":event-type"] for f in frames] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    for frame in frames:
        assert frame.headers[":message-type"] == "event"
        assert frame.headers[":content-type"] == "application/json"
        assert frame_json(frame)["p"]  # the padding member the real service adds
    assert frame_json(frames[0])["role"] == "assistant"
    # Some read ended inside a frame: the fake really splits a frame across writes.
    ends, offset = set(), 0
    for frame in frames:
        offset += frame.prelude.total_length
        ends.add(offset)
    boundaries, offset = [], 0
    for chunk in chunks[:-1]:
        offset += len(chunk)
        boundaries.append(offset)
    assert any(b not in ends for b in boundaries)


def test_frames_decode_byte_by_byte() -> None:
    data = event_frame("contentBlockDelta", {"delta": {"text": "Hé"}, "contentBlockIndex": 0}, 3)
    data += exception_frame("throttlingException", "slow down")
    data += encode_event_frame([(":event-type", "custom")], b"")
    buffer = EventStreamBuffer()
    frames: list[EventStreamMessage] = []
    for index in range(len(data)):
        buffer.add_data(data[index : index + 1])
        frames.extend(buffer)
    assert [f.headers.get(":event-type") for f in frames] == ["contentBlockDelta", None, "custom"]
    assert frame_json(frames[0])["delta"] == {"text": "Hé"}
    assert frames[1].headers[":exception-type"] == "throttlingException"
    assert frames[1].headers[":message-type"] == "exception"
    assert frame_json(frames[1]) == {"message": "slow down"}
    assert frames[2].payload == b""


# ----------------------------------------------------------------------------------------
# Auth
# ----------------------------------------------------------------------------------------


def test_wrong_secret_is_an_invalid_signature(bedrock: FakeBedrock) -> None:
    client = make_client(bedrock, aws_secret_access_key="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.converse(modelId=MODEL, messages=HELLO)
    code, status, message = error_of(caught.value)
    assert (code, status) == ("InvalidSignatureException", 403)
    assert message.startswith("The request signature we calculated does not match")
    # The service shows its canonical request: the path is encoded once more.
    assert f"/model/{encoded(MODEL).replace('%', '%25')}/converse" in message
    assert "not-the-secret" not in message and DEFAULT_SECRET_ACCESS_KEY not in message
    assert bedrock.calls[-1].error == "InvalidSignatureException"


def test_unknown_access_key_is_unrecognized(bedrock: FakeBedrock) -> None:
    client = make_client(bedrock, aws_access_key_id="AKIAUNKNOWNKEY000000")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.converse(modelId=MODEL, messages=HELLO)
    assert error_of(caught.value) == (
        "UnrecognizedClientException",
        403,
        "The security token included in the request is invalid.",
    )


def test_wrong_region_scope_is_an_invalid_signature(bedrock: FakeBedrock) -> None:
    client = make_client(bedrock, region_name="eu-west-1")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.converse(modelId=MODEL, messages=HELLO)
    assert error_of(caught.value) == (
        "InvalidSignatureException",
        403,
        "Credential should be scoped to a valid region.",
    )


def test_wrong_service_scope_is_an_invalid_signature(bedrock: FakeBedrock) -> None:
    body = json.dumps({"messages": HELLO}).encode()
    response = signed_post(bedrock, converse_path(encoded(MODEL)), body, service="bedrock-runtime")
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"].startswith("InvalidSignatureException:")
    assert response.json() == {
        "message": "Credential should be scoped to correct service: 'bedrock'. "
    }


def test_stale_signature_is_expired(bedrock: FakeBedrock) -> None:
    body = json.dumps({"messages": HELLO}).encode()
    an_hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    response = signed_post(bedrock, converse_path(encoded(MODEL)), body, at=an_hour_ago)
    assert response.status_code == 403
    assert response.json()["message"].startswith("Signature expired: ")
    # The same request signed now passes: only the time was wrong.
    assert signed_post(bedrock, converse_path(encoded(MODEL)), body).status_code == 200


def test_tampered_body_fails_the_signature(bedrock: FakeBedrock) -> None:
    body = json.dumps({"messages": HELLO}).encode()
    request = AWSRequest(
        method="POST",
        url=bedrock.root_url + converse_path(encoded(MODEL)),
        data=body,
        headers={"Content-Type": "application/json"},
    )
    SigV4Auth(
        Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY), "bedrock", bedrock.region
    ).add_auth(request)
    tampered = body.replace(b"hello", b"HELLO")
    response = httpx.post(request.url, content=tampered, headers=dict(request.headers.items()))
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"].startswith("InvalidSignatureException:")


def test_missing_authorization_is_access_denied(bedrock: FakeBedrock) -> None:
    client = make_client(
        bedrock, config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1})
    )
    with pytest.raises(client.exceptions.AccessDeniedException) as caught:
        client.converse(modelId=MODEL, messages=HELLO)
    assert error_of(caught.value) == (
        "AccessDeniedException",
        403,
        "Authorization header is missing",
    )
    raw = httpx.post(bedrock.root_url + converse_path(encoded(MODEL)), json={"messages": HELLO})
    assert raw.status_code == 403
    assert raw.json() == {"Message": "Authorization header is missing"}
    assert raw.headers["x-amzn-errortype"] == (
        "AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/"
    )
    assert len(bedrock.recorder.requests) == 2  # refused requests are recorded too


def test_session_token_credentials() -> None:
    with FakeBedrock(session_token="session-token-abc") as fake:
        good = make_client(fake, aws_session_token="session-token-abc")
        assert good.converse(modelId=MODEL, messages=HELLO)["stopReason"] == "end_turn"
        assert fake.recorder.last.headers["x-amz-security-token"] == "session-token-abc"
        for token in (None, "another-token"):
            with pytest.raises(botocore.exceptions.ClientError) as caught:
                make_client(fake, aws_session_token=token).converse(modelId=MODEL, messages=HELLO)
            assert error_of(caught.value)[:2] == ("UnrecognizedClientException", 403)


def test_bearer_api_key_over_plain_http() -> None:
    with FakeBedrock(api_key="bedrock-api-key-123") as fake:
        url = fake.root_url + converse_path(encoded(MODEL))
        good = httpx.post(
            url,
            json={"messages": HELLO},
            headers={"Authorization": "Bearer bedrock-api-key-123"},
        )
        assert good.status_code == 200
        assert good.json()["output"]["message"]["content"] == [{"text": DEFAULT_TEXT}]
        assert fake.calls[-1].auth == "bearer"
        bad = httpx.post(url, json={"messages": HELLO}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 403
        assert bad.headers["x-amzn-errortype"].startswith("AccessDeniedException:")
        assert "nope" not in bad.text


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (botocore sends bearer tokens over HTTPS only)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-bedrock")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_boto3_bearer_token_from_the_environment(
    tls_files: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # botocore prefers bearer auth for the "bedrock" signing name when
    # AWS_BEARER_TOKEN_BEDROCK is set, and refuses to send it over plain HTTP.
    cert, key = tls_files
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-xyz")
    with FakeBedrock(api_key="bedrock-api-key-xyz", ssl_certfile=cert, ssl_keyfile=key) as fake:
        assert fake.root_url.startswith("https://")
        # Closed before the fake stops: an idle TLS connection would hold its shutdown.
        with closing(make_client(fake, verify=cert)) as client:
            response = client.converse(modelId=MODEL, messages=HELLO)
            assert response["output"]["message"]["content"] == [{"text": DEFAULT_TEXT}]
            assert fake.recorder.last.headers["authorization"] == "Bearer bedrock-api-key-xyz"
            assert fake.calls[-1].auth == "bearer"
            events = stream_events(client.converse_stream(modelId=MODEL, messages=HELLO))
            assert events[-2] == {"messageStop": {"stopReason": "end_turn"}}

        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "a-revoked-key")
        with (
            closing(make_client(fake, verify=cert)) as revoked,
            pytest.raises(revoked.exceptions.AccessDeniedException),
        ):
            revoked.converse(modelId=MODEL, messages=HELLO)
        assert fake.recorder.last.headers["authorization"] == "Bearer a-revoked-key"


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "name", "status"),
    [
        ("throttled", "ThrottlingException", 429),
        ("unavailable", "ServiceUnavailableException", 503),
        ("not_ready", "ModelNotReadyException", 429),
        ("internal", "InternalServerException", 500),
        ("access_denied", "AccessDeniedException", 403),
        ("validation", "ValidationException", 400),
        ("not_found", "ResourceNotFoundException", 404),
        ("model_timeout", "ModelTimeoutException", 408),
        ("model_error", "ModelErrorException", 424),
    ],
)
def test_failure_modes_map_to_client_exceptions(
    bedrock: FakeBedrock, client: Any, mode: str, name: str, status: int
) -> None:
    bedrock.behaviour.mode = mode
    bedrock.behaviour.error_message = f"{mode} happened"
    with pytest.raises(getattr(client.exceptions, name)) as caught:
        client.converse(modelId=MODEL, messages=HELLO)
    assert error_of(caught.value) == (name, status, f"{mode} happened")
    headers = caught.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert (
        headers["x-amzn-errortype"]
        == f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )
    assert headers["x-amzn-requestid"]
    assert len(bedrock.recorder.requests) == 1  # one attempt: boto3 did not retry


def test_unknown_top_level_member_is_rejected(bedrock: FakeBedrock) -> None:
    body = json.dumps({"messages": HELLO, "temperature": 0.2}).encode()
    response = signed_post(bedrock, converse_path(encoded(MODEL)), body)
    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"].startswith("ValidationException:")
    assert "extraneous key [temperature] is not permitted" in response.json()["message"]


def test_unknown_nested_member_is_rejected(bedrock: FakeBedrock) -> None:
    messages = [{"role": "user", "content": [{"text": "hi", "cache": True}]}]
    response = signed_post(
        bedrock, converse_path(encoded(MODEL)), json.dumps({"messages": messages}).encode()
    )
    assert response.status_code == 400
    assert "extraneous key [cache]" in response.json()["message"]


def test_malformed_json_is_a_serialization_error(bedrock: FakeBedrock) -> None:
    response = signed_post(bedrock, converse_path(encoded(MODEL)), b'{"messages": [')
    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"].startswith("SerializationException:")


TOOL_USE = {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {}}}


def _result(tool_id: str) -> dict[str, Any]:
    return {"toolResult": {"toolUseId": tool_id, "content": [{"text": "done"}]}}


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        (
            {"messages": [{"role": "user", "content": [{"text": "  "}]}]},
            "The text field in the ContentBlock object at messages.0.content.0 is blank. Add text"
            " to the text field, and try again.",
        ),
        ({"messages": [*HELLO, *HELLO]}, MSG_ALTERNATE),
        ({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}, MSG_START_WITH_USER),
        ({"messages": []}, MSG_START_WITH_USER),
        (
            {"messages": [{"role": "user", "content": []}]},
            "The content field in the Message object at messages.0 is empty. Add a ContentBlock"
            " object to the content field and try again.",
        ),
        (
            {"messages": [*HELLO, {"role": "assistant", "content": [TOOL_USE]}, *HELLO]},
            MSG_TOOL_CONFIG_REQUIRED,
        ),
        (
            {
                "messages": [*HELLO, {"role": "assistant", "content": [TOOL_USE]}, *HELLO],
                "toolConfig": {"tools": [WEATHER_TOOL]},
            },
            "Expected toolResult blocks at messages.2.content for the following Ids: tooluse_1",
        ),
        (
            {
                "messages": [
                    *HELLO,
                    {"role": "assistant", "content": [{"text": "ok"}]},
                    {"role": "user", "content": [_result("tooluse_9")]},
                ],
                "toolConfig": {"tools": [WEATHER_TOOL]},
            },
            "The number of toolResult blocks at messages.2.content exceeds the number of toolUse"
            " blocks of previous turn.",
        ),
        (
            {"messages": [{"role": "system", "content": [{"text": "be nice"}]}, *HELLO]},
            MSG_START_WITH_USER,
        ),
        (
            {
                "messages": [
                    *HELLO,
                    {"role": "system", "content": [{"text": "be nice"}]},
                ]
            },
            "1 validation error detected: Value 'system' at 'messages.2.member.role' failed to"
            " satisfy constraint: Member must satisfy enum value set: [user, assistant]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"image": {"format": "bmp", "source": {"bytes": b"x"}}}],
                    }
                ]
            },
            "1 validation error detected: Value 'bmp' at"
            " 'messages.1.member.content.1.member.image.format' failed to satisfy constraint:"
            " Member must satisfy enum value set: [png, jpeg, gif, webp]",
        ),
        (
            {"messages": HELLO, "inferenceConfig": {"maxTokens": 0}},
            "1 validation error detected: Value '0' at 'inferenceConfig.maxTokens' failed to"
            " satisfy constraint: Member must have value greater than or equal to 1",
        ),
        (
            {
                "messages": HELLO,
                "toolConfig": {
                    "tools": [
                        {"toolSpec": {"name": "t", "inputSchema": {"json": {"type": "string"}}}}
                    ]
                },
            },
            "The value at toolConfig.tools.0.toolSpec.inputSchema.json.type must be one of the"
            " following: object.",
        ),
    ],
)
def test_invalid_conversations_are_rejected_like_the_real_service(
    bedrock: FakeBedrock, request_fields: dict[str, Any], message: str
) -> None:
    # Client-side parameter validation off, so that the fake is the one that says no.
    client = make_client(
        bedrock, config=Config(parameter_validation=False, retries={"total_max_attempts": 1})
    )
    with pytest.raises(client.exceptions.ValidationException) as caught:
        client.converse(modelId=MODEL, **request_fields)
    assert error_of(caught.value) == ("ValidationException", 400, message)


def test_content_block_must_have_exactly_one_member(bedrock: FakeBedrock) -> None:
    messages = [{"role": "user", "content": [{"text": "hi", "cachePoint": {"type": "default"}}]}]
    response = signed_post(
        bedrock, converse_path(encoded(MODEL)), json.dumps({"messages": messages}).encode()
    )
    assert response.status_code == 400
    assert "Member must have exactly one of the following members set" in response.json()["message"]


def test_invalid_model_id_fails_its_pattern(bedrock: FakeBedrock) -> None:
    client = make_client(
        bedrock, config=Config(parameter_validation=False, retries={"total_max_attempts": 1})
    )
    with pytest.raises(client.exceptions.ValidationException) as caught:
        client.converse(modelId="bad model!", messages=HELLO)
    assert error_of(caught.value)[2].startswith(
        "1 validation error detected: Value 'bad model!' at 'modelId' failed to satisfy"
        " constraint: Member must satisfy regular expression pattern: "
    )


# ----------------------------------------------------------------------------------------
# Hang
# ----------------------------------------------------------------------------------------


def test_hang_times_out_and_the_fake_sees_the_client_leave(bedrock: FakeBedrock) -> None:
    bedrock.behaviour.mode = "hang"
    client = make_client(
        bedrock, config=Config(read_timeout=0.5, retries={"total_max_attempts": 1})
    )
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        client.converse(modelId=MODEL, messages=HELLO)
    assert wait_for(lambda: bedrock.recorder.last.client_gone, seconds=10)
    assert not bedrock.recorder.last.completed
