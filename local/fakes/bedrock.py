"""A strict fake of Amazon Bedrock Runtime's Converse and ConverseStream APIs.

Written from the Bedrock Runtime API reference and botocore's service model for
``bedrock-runtime`` (the request shapes are checked against that very model, so member
names, required members, unions, enums and length/range constraints are the real ones), and
proven faithful by tests/test_fake_bedrock.py, which drives it with boto3.

What it does like the real service:

* routes ``POST /model/{modelId}/converse`` and ``/converse-stream``; the model id is one
  percent-encoded path segment (boto3 sends ``:`` as ``%3A`` and ``/`` as ``%2F``); a raw
  ``:`` is accepted too (the real service does: its SigV4 error messages show it
  re-encoding one), a raw ``/`` splits the segment and the route is unknown (404);
* auth: SigV4 (``AWS4-HMAC-SHA256``, service ``bedrock``) recomputed with botocore's own
  signer from the configured keys, session token checked, or ``Authorization: Bearer`` with
  a Bedrock API key; failures are the real 403s (UnrecognizedClientException,
  InvalidSignatureException, IncompleteSignatureException, AccessDeniedException);
* errors in the REST-JSON shape: ``x-amzn-ErrorType: <Name>:<coral namespace>`` and a
  ``{"message": ...}`` body, which botocore maps to ``client.exceptions.<Name>``;
* strict validation (unknown members, unions with one member, roles, alternation, blank
  text, tool use/result pairing) with the real messages where they are known;
* ConverseStream as ``application/vnd.amazon.eventstream`` frames (prelude, string headers,
  CRC32s) with the ``p`` padding member, text and tool input split over several deltas,
  one frame split across two writes and two frames coalesced into one write, so a client's
  incremental decoder is exercised; mid-stream exception frames.

``Behaviour`` holds the live knobs (answer text, failure modes, delays); ``FakeBedrock``
runs the app on a loopback port. ``encode_event_frame``/``event_frame``/``exception_frame``
build event-stream frames for other tests.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import re
import struct
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any
from urllib.parse import unquote

import botocore.session
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.model import Shape

from fakes.server import (
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
    restore_defaults,
    send_bytes,
    send_half_then_drop,
    sleep_ms,
)
from fakes.text import split_text

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCESS_KEY_ID = "AKIAFAKEBEDROCK00001"
DEFAULT_SECRET_ACCESS_KEY = "fake-bedrock-secret-access-key-0123456789"
SIGNING_SERVICE = "bedrock"
EVENT_STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"

# The namespaces after the error name in x-amzn-ErrorType, as the real service sends them:
# the service's own errors, and the AWS front end's auth errors.
BEDROCK_ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
CORAL_ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.coral.service/"

# Service errors (botocore service model, bedrock-runtime 2023-09-30) and the front end's.
ERROR_STATUS: dict[str, int] = {
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
    "SerializationException": 400,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "IncompleteSignatureException": 403,
    "UnknownOperationException": 404,
}
_FRONT_END_ERRORS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "UnknownOperationException",
    }
)

# Behaviour.mode -> (error name, default message) for the modes that answer an HTTP error.
MODE_ERRORS: dict[str, tuple[str, str]] = {
    "throttled": ("ThrottlingException", "Too many requests, please wait before trying again."),
    "unavailable": ("ServiceUnavailableException", "Bedrock is unable to process your request."),
    "not_ready": (
        "ModelNotReadyException",
        "Model is not ready to serve inference requests. The AWS SDK will automatically retry"
        " the operation up to 5 times.",
    ),
    "internal": (
        "InternalServerException",
        "The system encountered an unexpected error during processing. Try your request again.",
    ),
    "validation": ("ValidationException", "The provided request is invalid."),
    "access_denied": (
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    "not_found": ("ResourceNotFoundException", "Model not found. Check the model ID."),
    "model_timeout": ("ModelTimeoutException", "Model has timed out in processing the request."),
    "model_error": ("ModelErrorException", "The model returned an error."),
}
MODES = ("ok", "hang", "stream_error", "cut", *MODE_ERRORS)

# ConverseStreamOutput's exception members: the ``:exception-type`` of a mid-stream error.
STREAM_EXCEPTIONS = (
    "throttlingException",
    "modelStreamErrorException",
    "internalServerException",
    "serviceUnavailableException",
    "validationException",
)

# Real SigV4 messages of the AWS front end.
_MISSING_AUTH = "Authorization header is missing"
_BAD_TOKEN = "The security token included in the request is invalid."
_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your"
    " AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_BAD_API_KEY = "Authentication failed: Please make sure your API Key is valid."
_MAX_CLOCK_SKEW = datetime.timedelta(minutes=15)

# Real Converse validation messages (as reported by users of the real service).
MSG_ALTERNATE = (
    "A conversation must alternate between user and assistant roles. Make sure the conversation"
    " alternates between user and assistant roles and try again."
)
MSG_START_WITH_USER = (
    "A conversation must start with a user message. Try again with a conversation that starts"
    " with a user message."
)
MSG_TOOL_CONFIG_REQUIRED = (
    "The toolConfig field must be defined when using toolUse and toolResult content blocks."
)
MSG_BAD_MODEL = "The provided model identifier is invalid."


class BedrockError(Exception):
    """An error answer: its name picks the status and the x-amzn-ErrorType namespace."""

    def __init__(self, name: str, message: str, message_key: str = "message") -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        # The front end spells it "Message" in some answers ("Authorization header is missing").
        self.message_key = message_key

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.name]

    @property
    def error_type(self) -> str:
        namespace = CORAL_ERROR_NAMESPACE if self._from_front_end else BEDROCK_ERROR_NAMESPACE
        return f"{self.name}:{namespace}"

    @property
    def _from_front_end(self) -> bool:
        return self.name in _FRONT_END_ERRORS or self.message_key == "Message"


def _validation(message: str) -> BedrockError:
    return BedrockError("ValidationException", message)


# ----------------------------------------------------------------------------------------
# Event-stream encoding (application/vnd.amazon.eventstream)
# ----------------------------------------------------------------------------------------

_STRING_HEADER_TYPE = 7
_PAD_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def encode_event_frame(headers: Sequence[tuple[str, str]], payload: bytes) -> bytes:
    """One event-stream message: prelude (total length, headers length, prelude CRC32),
    string-typed headers, payload, and the CRC32 of everything before it (all big-endian)."""
    encoded = bytearray()
    for name, value in headers:
        raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
        encoded += struct.pack(">B", len(raw_name)) + raw_name
        encoded += struct.pack(">BH", _STRING_HEADER_TYPE, len(raw_value)) + raw_value
    total_length = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total_length, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + bytes(encoded) + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _padding(seed: int) -> str:
    # The real service pads every event with a "p" member of varying length so that sizes
    # on the wire do not reveal token lengths; clients must ignore it.
    return _PAD_ALPHABET[: 1 + (seed * 7) % len(_PAD_ALPHABET)]


def event_frame(event_type: str, body: dict[str, Any], pad: int | None = None) -> bytes:
    """An ``event`` frame of ConverseStream (messageStart, contentBlockDelta, ...)."""
    payload = body if pad is None else {**body, "p": _padding(pad)}
    return encode_event_frame(
        [
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        orjson.dumps(payload),
    )


def exception_frame(exception_type: str, message: str) -> bytes:
    """An ``exception`` frame, e.g. ``throttlingException``, as sent in the middle of a stream."""
    return encode_event_frame(
        [
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        orjson.dumps({"message": message}),
    )


# ----------------------------------------------------------------------------------------
# Authentication: SigV4 verified with botocore's signer, or a Bedrock API key
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    region: str
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    api_key: str | None

    def __repr__(self) -> str:  # never print secrets
        return f"AuthConfig(region={self.region!r}, access_key_id={self.access_key_id!r})"


_SIGV4_PARAM = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]*)")


def authenticate(
    config: AuthConfig,
    method: str,
    scheme: str,
    raw_path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    now: datetime.datetime | None = None,
) -> str:
    """Check a request's credentials like the real front end; return "sigv4" or "bearer"."""
    authorization = headers.get("authorization")
    if not authorization:
        raise BedrockError("AccessDeniedException", _MISSING_AUTH, message_key="Message")
    kind, _, rest = authorization.partition(" ")
    if kind == "Bearer":
        expected = config.api_key
        if expected is None or not hmac.compare_digest(rest.strip().encode(), expected.encode()):
            raise BedrockError("AccessDeniedException", _BAD_API_KEY, message_key="Message")
        return "bearer"
    if kind != "AWS4-HMAC-SHA256":
        raise BedrockError(
            "IncompleteSignatureException",
            f"Authorization header requires 'Credential' parameter. Authorization header requires"
            f" 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter."
            f' Authorization="{kind}"',
        )
    _verify_sigv4(config, method, scheme, raw_path, query, headers, body, rest, now)
    return "sigv4"


def _verify_sigv4(
    config: AuthConfig,
    method: str,
    scheme: str,
    raw_path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    params_text: str,
    now: datetime.datetime | None,
) -> None:
    params = dict(_SIGV4_PARAM.findall(params_text))
    missing = [p for p in ("Credential", "Signature", "SignedHeaders") if not params.get(p)]
    if missing:
        raise BedrockError(
            "IncompleteSignatureException",
            " ".join(f"Authorization header requires '{p}' parameter." for p in missing),
        )
    scope = params["Credential"].split("/")
    if len(scope) != 5:
        raise BedrockError(
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, e.g."
            f" keyid/date/region/service/term, got '{params['Credential']}'",
        )
    if scope[4] != "aws4_request":
        raise BedrockError(
            "InvalidSignatureException",
            f"Credential should be scoped with a valid terminator: 'aws4_request', not"
            f" '{scope[4]}'. ",
        )
    access_key_id, scope_date, region, service, _ = scope
    if access_key_id != config.access_key_id or config.secret_access_key is None:
        raise BedrockError("UnrecognizedClientException", _BAD_TOKEN)
    if headers.get("x-amz-security-token") != config.session_token:
        raise BedrockError("UnrecognizedClientException", _BAD_TOKEN)
    if region != config.region:
        raise BedrockError(
            "InvalidSignatureException", "Credential should be scoped to a valid region."
        )
    if service != SIGNING_SERVICE:
        raise BedrockError(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{SIGNING_SERVICE}'. ",
        )
    amz_date = headers.get("x-amz-date", "")
    _check_request_time(amz_date, scope_date, now)
    signed = params["SignedHeaders"].split(";")
    if "host" not in signed:
        raise BedrockError(
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        )
    # Rebuild the request from what was received (raw path, the signed headers only) and let
    # botocore's own SigV4 code compute the canonical request and the signature.
    request = AWSRequest(
        method=method,
        url=f"{scheme}://{headers.get('host', '')}{raw_path}" + (f"?{query}" if query else ""),
        headers={name: headers.get(name, "") for name in signed},
        data=body,
    )
    request.context["timestamp"] = amz_date
    credentials = Credentials(access_key_id, config.secret_access_key, config.session_token)
    signer = SigV4Auth(credentials, SIGNING_SERVICE, config.region)
    canonical_request = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical_request)
    expected = signer.signature(string_to_sign, request)
    body_hash = headers.get("x-amz-content-sha256")
    body_hash_ok = body_hash is None or body_hash == hashlib.sha256(body).hexdigest()
    if not body_hash_ok or not hmac.compare_digest(expected, params["Signature"]):
        # Like the real answer, show what the service signed: neither contains a secret.
        raise BedrockError(
            "InvalidSignatureException",
            f"{_BAD_SIGNATURE}\n\nThe Canonical String for this request should have been\n"
            f"'{canonical_request}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n",
        )


def _check_request_time(amz_date: str, scope_date: str, now: datetime.datetime | None) -> None:
    if not amz_date:
        raise BedrockError(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    try:
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.UTC
        )
    except ValueError:
        raise BedrockError(
            "IncompleteSignatureException",
            f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'.",
        ) from None
    if scope_date != amz_date[:8]:
        raise BedrockError(
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from"
            f" HTTP: '{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    current = now or datetime.datetime.now(datetime.UTC)
    stamp = "%Y%m%dT%H%M%SZ"
    if signed_at < current - _MAX_CLOCK_SKEW:
        raise BedrockError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than"
            f" {(current - _MAX_CLOCK_SKEW).strftime(stamp)} ({current.strftime(stamp)} - 15 min.)",
        )
    if signed_at > current + _MAX_CLOCK_SKEW:
        raise BedrockError(
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than"
            f" {(current + _MAX_CLOCK_SKEW).strftime(stamp)} ({current.strftime(stamp)} + 15 min.)",
        )


# ----------------------------------------------------------------------------------------
# Request validation: structure from botocore's service model, then Converse's own rules
# ----------------------------------------------------------------------------------------


@cache
def _input_shape(operation: str) -> Shape:
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shape: Shape = model.operation_model(operation).input_shape
    return shape


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def validate_model_id(model_id: str) -> None:
    shape = _input_shape("Converse").members["modelId"]
    errors: list[str] = []
    _check_string(shape, model_id, "modelId", errors)
    if errors:
        raise _validation(_constraint_message(errors))


def _constraint_message(errors: list[str]) -> str:
    # Coral's wording for constraint failures, e.g. "1 validation error detected: Value
    # 'x' at 'modelId' failed to satisfy constraint: Member must satisfy ...".
    count = f"{len(errors)} validation error{'s' if len(errors) > 1 else ''} detected: "
    return count + "; ".join(errors)


def _serialization(path: str, expected: str) -> BedrockError:
    return BedrockError("SerializationException", f"Expected {expected} at '{path}'")


def validate_shape(operation: str, body: Any) -> None:
    """Check the JSON body against the operation's input shape (members bound to the URI are
    not body members)."""
    shape = _input_shape(operation)
    if not isinstance(body, dict):
        raise _serialization("", "a JSON object")
    errors: list[str] = []
    body_members = {
        name: member
        for name, member in shape.members.items()
        if member.serialization.get("location") is None
    }
    _check_members(shape, body_members, body, "", errors)
    if errors:
        raise _validation(_constraint_message(errors))


def _extraneous(path: str, key: str) -> BedrockError:
    pointer = "#/" + path.replace(".", "/") if path else "#"
    return _validation(
        f"Malformed input request: {pointer}: extraneous key [{key}] is not permitted,"
        " please reformat your input and try again."
    )


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check_members(
    shape: Shape, members: dict[str, Shape], value: dict[str, Any], path: str, errors: list[str]
) -> None:
    for key in value:
        if key not in members:
            raise _extraneous(path, key)
    for name in shape.required_members:
        if name in members and value.get(name) is None:
            errors.append(
                f"Value null at '{_join(path, name)}' failed to satisfy constraint:"
                " Member must not be null"
            )
    present = [name for name, item in value.items() if item is not None]
    if shape.is_tagged_union and len(present) != 1:
        errors.append(
            f"Value at '{path}' failed to satisfy constraint: Member must have exactly one of"
            f" the following members set: [{', '.join(members)}]"
        )
    for name in present:
        _check_value(members[name], value[name], _join(path, name), errors)


def _check_value(shape: Shape, value: Any, path: str, errors: list[str]) -> None:
    kind = shape.type_name
    if kind == "structure":
        if shape.is_document_type:
            return  # any JSON value
        if not isinstance(value, dict):
            raise _serialization(path, "a JSON object")
        _check_members(shape, shape.members, value, path, errors)
    elif kind == "list":
        if not isinstance(value, list):
            raise _serialization(path, "a JSON array")
        _check_length(shape, len(value), "length", path, None, errors)
        for index, item in enumerate(value):
            if item is None:
                raise _serialization(f"{path}.{index + 1}.member", "a non-null list member")
            _check_value(shape.member, item, f"{path}.{index + 1}.member", errors)
    elif kind == "map":
        if not isinstance(value, dict):
            raise _serialization(path, "a JSON object")
        _check_length(shape, len(value), "length", path, None, errors)
        for key, item in value.items():
            _check_string(shape.key, key, f"{path}.key", errors)
            _check_value(shape.value, item, f"{path}.{key}.member", errors)
    elif kind == "string":
        if not isinstance(value, str):
            raise _serialization(path, "a string")
        _check_string(shape, value, path, errors)
    elif kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _serialization(path, "an integer")
        _check_range(shape, value, path, errors)
    elif kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _serialization(path, "a number")
        _check_range(shape, value, path, errors)
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _serialization(path, "a boolean")
    elif kind == "blob":
        _check_blob(shape, value, path, errors)


def _check_blob(shape: Shape, value: Any, path: str, errors: list[str]) -> None:
    # Blobs travel base64-encoded in the JSON body.
    if not isinstance(value, str):
        raise _serialization(path, "a base64-encoded string")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _serialization(path, "a base64-encoded string") from None
    _check_length(shape, len(decoded), "length", path, None, errors)


def _check_string(shape: Shape, value: str, path: str, errors: list[str]) -> None:
    enum = shape.metadata.get("enum")
    if enum and value not in enum:
        errors.append(
            f"Value '{value}' at '{path}' failed to satisfy constraint: Member must satisfy enum"
            f" value set: [{', '.join(enum)}]"
        )
    _check_length(shape, len(value), "length", path, value, errors)
    pattern = shape.metadata.get("pattern")
    if pattern and not _pattern(pattern).fullmatch(value):
        errors.append(
            f"Value '{value}' at '{path}' failed to satisfy constraint: Member must satisfy"
            f" regular expression pattern: {pattern}"
        )


def _check_length(
    shape: Shape, length: int, what: str, path: str, shown: str | None, errors: list[str]
) -> None:
    prefix = f"Value '{shown}' at '{path}'" if shown is not None else f"Value at '{path}'"
    minimum, maximum = shape.metadata.get("min"), shape.metadata.get("max")
    if minimum is not None and length < minimum:
        errors.append(
            f"{prefix} failed to satisfy constraint: Member must have {what} greater than or"
            f" equal to {minimum}"
        )
    if maximum is not None and length > maximum:
        errors.append(
            f"{prefix} failed to satisfy constraint: Member must have {what} less than or equal"
            f" to {maximum}"
        )


def _check_range(shape: Shape, value: float, path: str, errors: list[str]) -> None:
    minimum, maximum = shape.metadata.get("min"), shape.metadata.get("max")
    if minimum is not None and value < minimum:
        errors.append(
            f"Value '{value}' at '{path}' failed to satisfy constraint: Member must have value"
            f" greater than or equal to {minimum}"
        )
    if maximum is not None and value > maximum:
        errors.append(
            f"Value '{value}' at '{path}' failed to satisfy constraint: Member must have value"
            f" less than or equal to {maximum}"
        )


def validate_conversation(body: dict[str, Any]) -> None:
    """Converse's own rules on top of the shapes (paths here are 0-based, as the service's)."""
    messages: list[dict[str, Any]] = body.get("messages") or []
    if not messages or messages[0]["role"] != "user":
        raise _validation(MSG_START_WITH_USER)
    for index, message in enumerate(messages):
        if message["role"] not in ("user", "assistant"):
            raise _validation(
                f"1 validation error detected: Value '{message['role']}' at"
                f" 'messages.{index + 1}.member.role' failed to satisfy constraint: Member must"
                " satisfy enum value set: [user, assistant]"
            )
        if index and message["role"] == messages[index - 1]["role"]:
            raise _validation(MSG_ALTERNATE)
        if not message["content"]:
            raise _validation(
                f"The content field in the Message object at messages.{index} is empty. Add a"
                " ContentBlock object to the content field and try again."
            )
        for block_index, block in enumerate(message["content"]):
            _check_block(block, f"messages.{index}.content.{block_index}", message["role"])
    for index, block in enumerate(body.get("system") or []):
        text = block.get("text")
        if text is not None and not text.strip():
            raise _validation(
                f"The text field in the SystemContentBlock object at system.{index} is blank."
                " Add text to the text field, and try again."
            )
    tool_config = body.get("toolConfig")
    uses_tools = any(
        "toolUse" in block or "toolResult" in block
        for message in messages
        for block in message["content"]
    )
    if uses_tools and tool_config is None:
        raise _validation(MSG_TOOL_CONFIG_REQUIRED)
    if tool_config is not None:
        _check_tool_config(tool_config)
    _check_tool_pairing(messages)


def _check_block(block: dict[str, Any], path: str, role: str) -> None:
    text = block.get("text")
    if text is not None and not text.strip():
        raise _validation(
            f"The text field in the ContentBlock object at {path} is blank. Add text to the text"
            " field, and try again."
        )
    if "toolUse" in block:
        if role != "assistant":
            raise _validation(
                f"The toolUse content block at {path} is only allowed in an assistant message."
            )
        if not isinstance(block["toolUse"]["input"], dict):
            raise _validation(
                f"The format of the value at {path}.toolUse.input is invalid. Provide a json"
                " object for the field and try again."
            )
    if "toolResult" in block:
        if role != "user":
            raise _validation(
                f"The toolResult content block at {path} is only allowed in a user message."
            )
        for item_index, item in enumerate(block["toolResult"]["content"]):
            if "json" in item and not isinstance(item["json"], dict):
                raise _validation(
                    f"The format of the value at {path}.toolResult.content.{item_index}.json is"
                    " invalid. Provide a json object for the field and try again."
                )
            if "text" in item and not item["text"].strip():
                raise _validation(
                    f"The text field in the ToolResultContentBlock object at"
                    f" {path}.toolResult.content.{item_index} is blank. Add text to the text"
                    " field, and try again."
                )


def _check_tool_config(tool_config: dict[str, Any]) -> None:
    names: list[str] = []
    for index, tool in enumerate(tool_config["tools"]):
        spec = tool.get("toolSpec")
        if spec is None:
            continue
        schema = spec["inputSchema"].get("json")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise _validation(
                f"The value at toolConfig.tools.{index}.toolSpec.inputSchema.json.type must be one"
                " of the following: object."
            )
        if spec["name"] in names:
            raise _validation(
                f"The tool name {spec['name']} at toolConfig.tools.{index}.toolSpec.name is"
                " duplicated. Use unique tool names and try again."
            )
        names.append(spec["name"])
    chosen = (tool_config.get("toolChoice") or {}).get("tool")
    if chosen is not None and chosen["name"] not in names:
        raise _validation(
            f"The tool {chosen['name']} in toolConfig.toolChoice.tool.name isn't defined in"
            " toolConfig.tools. Define the tool and try again."
        )


def _check_tool_pairing(messages: list[dict[str, Any]]) -> None:
    """Each toolResult answers a toolUse of the assistant turn just before it."""
    for index, message in enumerate(messages):
        if message["role"] != "user":
            continue
        previous = messages[index - 1]["content"] if index else []
        asked = [b["toolUse"]["toolUseId"] for b in previous if "toolUse" in b]
        answered = [b["toolResult"]["toolUseId"] for b in message["content"] if "toolResult" in b]
        if len(answered) > len(asked):
            raise _validation(
                f"The number of toolResult blocks at messages.{index}.content exceeds the number"
                " of toolUse blocks of previous turn."
            )
        missing = [tool_id for tool_id in asked if tool_id not in answered]
        if missing:
            raise _validation(
                f"Expected toolResult blocks at messages.{index}.content for the following Ids:"
                f" {', '.join(missing)}"
            )


# ----------------------------------------------------------------------------------------
# Deterministic answers
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Behaviour:
    """Live knobs of the fake; read on every request, so changes apply at once."""

    mode: str = "ok"
    text: str = "Hello from fake Bedrock"
    # Message of an error mode ("validation", "throttled", ...; None: the mode's default).
    error_message: str | None = None
    # Model ids that exist (None: any id matching the service's pattern).
    model_ids: list[str] | None = None
    # Tools: answer with a toolUse when toolConfig is present (unless the last user turn
    # carries toolResults); two toolUse blocks; an optional text block before them.
    use_tools: bool = True
    two_tool_calls: bool = False
    tool_preamble: str | None = None
    # Force a stopReason such as "guardrail_intervened" or "content_filtered".
    stop_reason: str | None = None
    cache_read_input_tokens: int | None = None
    cache_write_input_tokens: int | None = None
    # Streaming: pieces per text block / per tool input, the "p" padding member.
    stream_chunks: int = 3
    tool_input_chunks: int = 3
    padding: bool = True
    # Mid-stream failures: "stream_error" sends this exception after that many events;
    # "cut" drops the connection after that many events.
    stream_error_type: str = "modelStreamErrorException"
    fail_after_events: int = 2
    # Delays: before answering, before the first event, between events, and between the
    # two halves of the frame that is deliberately split across two writes.
    latency_ms: float = 0
    first_byte_delay_ms: float = 0
    event_delay_ms: float = 0
    split_delay_ms: float = 0


@dataclasses.dataclass
class Answer:
    content: list[dict[str, Any]]
    stop_reason: str
    usage: dict[str, int]


def _words(text: str) -> int:
    return len(text.split())


def _texts(blocks: list[dict[str, Any]]) -> Iterator[str]:
    for block in blocks:
        if "text" in block:
            yield block["text"]
        result = block.get("toolResult")
        if result:
            for item in result["content"]:
                if "text" in item:
                    yield item["text"]
                if "json" in item:
                    yield orjson.dumps(item["json"]).decode()


def _input_tokens(body: dict[str, Any]) -> int:
    system = sum(_words(t) for t in _texts(body.get("system") or []))
    return system + sum(_words(t) for m in body["messages"] for t in _texts(m["content"]))


def example_input(schema: Any, name: str = "value") -> Any:
    """A deterministic value for a JSON schema: required properties filled by type."""
    if not isinstance(schema, dict):
        return f"{name}-value"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {key: example_input(properties.get(key), key) for key in required}
    if kind == "array":
        items = schema.get("items")
        return [example_input(items, name)] if isinstance(items, dict) else []
    scalars: dict[str, Any] = {"integer": 1, "number": 1.5, "boolean": True, "null": None}
    return scalars.get(str(kind), f"{name}-value")


def _tool_use_id(seed: str) -> str:
    # The real ids look like "tooluse_" + 22 url-safe characters.
    digest = hashlib.sha256(seed.encode()).digest()
    return "tooluse_" + base64.urlsafe_b64encode(digest).decode()[:22]


def _tool_answer(body: dict[str, Any], behaviour: Behaviour) -> list[dict[str, Any]]:
    config = body["toolConfig"]
    specs = [tool["toolSpec"] for tool in config["tools"] if "toolSpec" in tool]
    chosen = (config.get("toolChoice") or {}).get("tool")
    first = (
        next((s for s in specs if s["name"] == chosen["name"]), specs[0]) if chosen else specs[0]
    )
    picked = [first]
    if behaviour.two_tool_calls:
        picked.append(next((s for s in specs if s is not first), first))
    content: list[dict[str, Any]] = []
    if behaviour.tool_preamble:
        content.append({"text": behaviour.tool_preamble})
    turn = len(body["messages"])
    for index, spec in enumerate(picked):
        tool_input = example_input(spec["inputSchema"]["json"])
        tool_id = _tool_use_id(f"{spec['name']}/{turn}/{index}")
        content.append(
            {"toolUse": {"toolUseId": tool_id, "name": spec["name"], "input": tool_input}}
        )
    return content


def _tool_results_text(results: list[dict[str, Any]]) -> str:
    parts = []
    for result in results:
        shown = "; ".join(
            item["text"] if "text" in item else orjson.dumps(item["json"]).decode()
            for item in result["content"]
            if "text" in item or "json" in item
        )
        status = "failed" if result.get("status") == "error" else "returned"
        parts.append(f"The tool {status}: {shown}")
    return " ".join(parts)


def _cut_text(text: str, inference: dict[str, Any]) -> tuple[str, str]:
    stop_reason = "end_turn"
    positions = [text.find(s) for s in inference.get("stopSequences") or [] if s and s in text]
    if positions:
        text, stop_reason = text[: min(positions)].rstrip(), "stop_sequence"
    max_tokens = inference.get("maxTokens")
    if max_tokens is not None and _words(text) > max_tokens:
        text, stop_reason = " ".join(text.split()[:max_tokens]), "max_tokens"
    return text, stop_reason


def build_answer(body: dict[str, Any], behaviour: Behaviour) -> Answer:
    last = body["messages"][-1]
    results = [b["toolResult"] for b in last["content"] if "toolResult" in b]
    content: list[dict[str, Any]]
    config: dict[str, Any] = body.get("toolConfig") or {}
    has_specs = any("toolSpec" in tool for tool in config.get("tools", []))
    # toolChoice "any" or "tool" obliges the model to call a tool; "auto" lets it choose.
    forced = has_specs and bool({"any", "tool"} & set(config.get("toolChoice") or {}))
    if has_specs and (behaviour.use_tools or forced) and not results:
        content, stop_reason = _tool_answer(body, behaviour), "tool_use"
    else:
        text = f"{behaviour.text} {_tool_results_text(results)}" if results else behaviour.text
        text, stop_reason = _cut_text(text, body.get("inferenceConfig") or {})
        content = [{"text": text}] if text else []
    # A tool call costs about one token per four characters of its JSON input.
    output_tokens = sum(
        _words(b["text"]) if "text" in b else 1 + len(orjson.dumps(b["toolUse"]["input"])) // 4
        for b in content
    )
    input_tokens = _input_tokens(body)
    usage = {
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens,
    }
    if behaviour.cache_read_input_tokens is not None:
        usage["cacheReadInputTokens"] = behaviour.cache_read_input_tokens
    if behaviour.cache_write_input_tokens is not None:
        usage["cacheWriteInputTokens"] = behaviour.cache_write_input_tokens
    return Answer(content, behaviour.stop_reason or stop_reason, usage)


def stream_events(
    answer: Answer, behaviour: Behaviour, latency_ms: int
) -> list[tuple[str, dict[str, Any]]]:
    """The ConverseStream events of an answer, in order, as (event type, body)."""
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    for index, block in enumerate(answer.content):
        if "toolUse" in block:
            tool = block["toolUse"]
            start = {"toolUse": {"toolUseId": tool["toolUseId"], "name": tool["name"]}}
            events.append(("contentBlockStart", {"start": start, "contentBlockIndex": index}))
            fragments = split_text(
                orjson.dumps(tool["input"]).decode(), behaviour.tool_input_chunks
            )
            deltas: list[dict[str, Any]] = [{"toolUse": {"input": f}} for f in fragments]
        else:
            # Text blocks get no contentBlockStart on the real service, only deltas.
            deltas = [
                {"text": piece} for piece in split_text(block["text"], behaviour.stream_chunks)
            ]
        events.extend(
            ("contentBlockDelta", {"delta": delta, "contentBlockIndex": index}) for delta in deltas
        )
        events.append(("contentBlockStop", {"contentBlockIndex": index}))
    events.append(("messageStop", {"stopReason": answer.stop_reason}))
    events.append(("metadata", {"usage": answer.usage, "metrics": {"latencyMs": latency_ms}}))
    return events


# ----------------------------------------------------------------------------------------
# The ASGI application
# ----------------------------------------------------------------------------------------

OPERATIONS = {"converse": "Converse", "converse-stream": "ConverseStream"}


@dataclasses.dataclass
class Call:
    """What the fake made of one request, next to its ``Seen`` record."""

    seen: Seen
    operation: str | None = None
    model_id: str | None = None
    auth: str | None = None  # "sigv4" or "bearer" once authenticated
    error: str | None = None  # the error name answered, if any


def _route(raw_path: str) -> tuple[str, str] | None:
    """(operation, decoded model id) for /model/{modelId}/converse[-stream], else None."""
    segments = raw_path.split("/")
    if len(segments) != 4 or segments[0] or segments[1] != "model":
        return None
    operation = OPERATIONS.get(segments[3])
    if operation is None or not segments[2]:
        return None
    return operation, unquote(segments[2])


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[name] = f"{headers[name]},{text}" if name in headers else text
    return headers


class BedrockApp(FakeApp):
    """Raw ASGI app of the fake (FakeBedrock runs it)."""

    def __init__(self, auth: AuthConfig, behaviour: Behaviour) -> None:
        super().__init__()
        self.auth = auth
        self.behaviour = behaviour
        self.recorder = Recorder()
        self.calls: list[Call] = []

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen, malformed, _ = await read_request(scope, receive, self.recorder)
        call = Call(seen)
        self.calls.append(call)
        request_id = str(uuid.uuid4())
        try:
            await self._handle(scope, receive, send, call, malformed, request_id)
        except BedrockError as error:
            call.error = error.name
            await _send_error(send, error, request_id)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        call: Call,
        malformed: bool,
        request_id: str,
    ) -> None:
        started = time.monotonic()
        raw_path = scope.get("raw_path", scope["path"].encode()).decode("latin-1").split("?")[0]
        route = _route(raw_path)
        if route is None or scope["method"] != "POST":
            raise BedrockError("UnknownOperationException", "Unknown operation")
        call.operation, call.model_id = route
        headers = _headers(scope)
        query = scope.get("query_string", b"").decode("latin-1")
        body = call.seen.body
        call.auth = authenticate(
            self.auth, scope["method"], scope["scheme"], raw_path, query, headers, body
        )
        request = _request_object(call.seen.json if body else {}, malformed)
        validate_model_id(call.model_id)
        validate_shape(call.operation, request)
        validate_conversation(request)
        behaviour = self.behaviour
        if behaviour.mode not in MODES:  # a typo in a test should not pass for "ok"
            raise BedrockError(
                "InternalServerException", f"fake Bedrock: unknown mode {behaviour.mode!r}"
            )
        if behaviour.model_ids is not None and call.model_id not in behaviour.model_ids:
            raise _validation(MSG_BAD_MODEL)
        if behaviour.mode == "hang":
            call.seen.client_gone = await self.hanging.hold(send, receive)
            return
        await sleep_ms(behaviour.latency_ms)
        if behaviour.mode in MODE_ERRORS:
            name, default = MODE_ERRORS[behaviour.mode]
            raise BedrockError(name, behaviour.error_message or default)
        answer = build_answer(request, behaviour)
        latency = int((time.monotonic() - started) * 1000)
        if call.operation == "ConverseStream":
            await self._stream(send, receive, call.seen, answer, latency, request_id)
        else:
            await self._complete(send, receive, call.seen, request, answer, latency, request_id)

    async def _complete(
        self,
        send: Send,
        receive: Receive,
        seen: Seen,
        request: dict[str, Any],
        answer: Answer,
        latency_ms: int,
        request_id: str,
    ) -> None:
        response: dict[str, Any] = {
            "output": {"message": {"role": "assistant", "content": answer.content}},
            "stopReason": answer.stop_reason,
            "usage": answer.usage,
            "metrics": {"latencyMs": latency_ms},
        }
        if "performanceConfig" in request:
            response["performanceConfig"] = request["performanceConfig"]
        payload = orjson.dumps(response)
        headers = [(b"x-amzn-requestid", request_id.encode())]
        if self.behaviour.mode == "cut":
            await send_half_then_drop(send, receive, payload, headers=headers)
            return
        await send_bytes(send, 200, payload, headers=headers)
        seen.completed = True

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        seen: Seen,
        answer: Answer,
        latency_ms: int,
        request_id: str,
    ) -> None:
        behaviour = self.behaviour
        events = stream_events(answer, behaviour, latency_ms)
        frames = [
            event_frame(kind, body, pad=index if behaviour.padding else None)
            for index, (kind, body) in enumerate(events)
        ]
        fail_at = max(0, min(behaviour.fail_after_events, len(frames)))
        sender = StreamSender(send, receive, seen)
        try:
            await sender.start(
                200, EVENT_STREAM_CONTENT_TYPE, [(b"x-amzn-requestid", request_id.encode())]
            )
            await sleep_ms(behaviour.first_byte_delay_ms)
            if behaviour.mode == "stream_error":
                frames = [*frames[:fail_at], exception_frame(*_stream_error(behaviour))]
            elif behaviour.mode == "cut":
                for frame in frames[:fail_at]:
                    if not await sender.chunk(frame):
                        return
                await drop_connection(send, receive)
                return
            for index, write in enumerate(_writes(frames)):
                if write.second_half:
                    await sleep_ms(behaviour.split_delay_ms)
                elif index:
                    await sleep_ms(behaviour.event_delay_ms)
                if not await sender.chunk(write.data):
                    return
            await sender.end()
        finally:
            await sender.close()


def _stream_error(behaviour: Behaviour) -> tuple[str, str]:
    kind = behaviour.stream_error_type
    default = {
        "throttlingException": MODE_ERRORS["throttled"][1],
        "serviceUnavailableException": MODE_ERRORS["unavailable"][1],
        "internalServerException": MODE_ERRORS["internal"][1],
        "validationException": MODE_ERRORS["validation"][1],
    }.get(kind, "The model stream failed.")
    return kind, behaviour.error_message or default


@dataclasses.dataclass(frozen=True)
class _Write:
    data: bytes
    second_half: bool = False  # of the frame split across two writes (waits split_delay_ms)


def _writes(frames: list[bytes]) -> list[_Write]:
    """One write per frame, except: the second frame is split in two writes (in the middle
    of its prelude, the hardest case for a decoder), and the last two share one write."""
    writes = [_Write(frame) for frame in frames]
    if len(frames) >= 2:
        second = frames[1]
        writes[1:2] = [_Write(second[:5]), _Write(second[5:], second_half=True)]
    if len(frames) >= 4:
        writes[-2:] = [_Write(writes[-2].data + writes[-1].data)]
    return writes


def _request_object(parsed: Any, malformed: bool) -> dict[str, Any]:
    if malformed:  # not JSON at all
        raise BedrockError("SerializationException", "Could not parse the request body as JSON.")
    if not isinstance(parsed, dict):
        raise _serialization("", "a JSON object")
    return parsed


async def _send_error(send: Send, error: BedrockError, request_id: str) -> None:
    payload = orjson.dumps({error.message_key: error.message})
    headers = [
        (b"x-amzn-errortype", error.error_type.encode()),
        (b"x-amzn-requestid", request_id.encode()),
    ]
    with contextlib.suppress(RuntimeError):  # the response had already started
        await send_bytes(send, error.status, payload, headers=headers)


# ----------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------


class FakeBedrock(FakeServer[BedrockApp]):
    """The fake on a loopback port, on its own thread: ``with FakeBedrock() as fake: ...``.

    ``root_url`` is the endpoint URL (``endpoint_url`` for boto3, Berry's ``base_url``).
    Pass ``ssl_certfile``/``ssl_keyfile`` to serve HTTPS (botocore sends bearer tokens only
    over HTTPS).
    """

    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        region: str = DEFAULT_REGION,
        access_key_id: str | None = DEFAULT_ACCESS_KEY_ID,
        secret_access_key: str | None = DEFAULT_SECRET_ACCESS_KEY,
        session_token: str | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        auth = AuthConfig(region, access_key_id, secret_access_key, session_token, api_key)
        app = BedrockApp(auth, behaviour if behaviour is not None else Behaviour())
        tls: dict[str, Any] = {}
        if ssl_certfile is not None:
            tls = {"ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile}
        self.tls = bool(tls)
        super().__init__(app, host=host, port=port, **tls)

    @property
    def region(self) -> str:
        return self.app.auth.region

    @property
    def behaviour(self) -> Behaviour:
        return self.app.behaviour

    @property
    def recorder(self) -> Recorder:
        return self.app.recorder

    @property
    def calls(self) -> list[Call]:
        return self.app.calls

    @property
    def root_url(self) -> str:
        url = self.server.root_url
        return "https" + url[len("http") :] if self.tls else url

    def reset(self) -> None:
        """Default behaviour, no record, no calls (between tests sharing one server)."""
        restore_defaults(self.behaviour, Behaviour())
        self.recorder.clear()
        self.calls.clear()
