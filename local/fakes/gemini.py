"""A strict fake of the Google Gemini API (generativelanguage.googleapis.com, v1beta).

Berry's ``gemini`` backend translates OpenAI chat completions into ``generateContent`` and
``streamGenerateContent?alt=sse`` calls and the answers back; its tests run against this fake, so
the fake rejects what the real service rejects and answers in the exact shapes the official
``google-genai`` SDK parses (tests/test_fake_gemini.py proves that with the SDK itself).

Sources: the v1beta protos (googleapis/googleapis google/ai/generativelanguage/v1beta/
content.proto, generative_service.proto and safety.proto, Dec 2025), the Gemini API reference
and the service's own error texts as users reported them. What this fake does:

* Request bodies are parsed like the real proto-JSON front end: camelCase or snake_case names,
  every unknown name rejected with Google's ``Invalid JSON payload received. Unknown name "x"
  at 'path': Cannot find field.`` (all violations at once, in ``BadRequest.fieldViolations``),
  type errors as ``Invalid value at 'path' (TYPE), value``. Function parameters use Gemini's
  Schema object, so JSON-Schema-only keys (additionalProperties, $ref, const, oneOf...) are
  unknown names there, exactly as in production. Semantic checks follow (``* GenerateContent
  Request.<path>: ...``), then the conversation rules (roles, function call/response turns).
* The key must come in ``x-goog-api-key``. A ``key=`` query parameter is refused (400): Berry
  promises never to put a key in a URL. Only ``/v1beta`` is served by default: the v1 surface
  is narrower and not modelled (``Behaviour.api_versions``).
* Answers are deterministic (``Behaviour``): text, function calls built from the declared
  parameters, JSON built from ``responseSchema``, stop sequences, ``maxOutputTokens``,
  ``candidateCount``, usage, prompt blocks and forced finish reasons, Gemini 3 thought
  signatures, plus failure modes (429, 500, 503, 400, hang, a stream cut mid-way).

Where the reference is silent the fake is the stricter of the plausible behaviours; those
choices are marked "conservative" below.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson

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
    header,
    read_request,
    restore_defaults,
    send_bytes,
    send_half_then_drop,
    sleep_ms,
)
from fakes.text import split_text

DEFAULT_API_KEY: Final = "fake-gemini-key-0123456789"
DEFAULT_MODELS: Final = (
    "gemini-2.0-flash",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.5-pro",
    "gemini-3-flash-preview",
    "gemini-3-pro-preview",
)
MODES: Final = (
    "ok",
    "rate_limited",
    "server_error",
    "unavailable",
    "invalid_argument",
    "hang",
    "stream_error",
)
# Documented bypass values for thought-signature validation (ai.google.dev thought-signatures).
DUMMY_THOUGHT_SIGNATURES: Final = frozenset(
    {"skip_thought_signature_validator", "context_engineering_is_the_way_to_go"}
)
SSE_SEPARATOR: Final = b"\r\n\r\n"  # what the real service puts between SSE events


@dataclass
class Behaviour:
    """Live knobs of the fake, read on every request (mutate them between calls)."""

    mode: str = "ok"  # one of MODES
    error_message: str = "Request contains an invalid argument."  # for "invalid_argument"
    retry_delay: str = "20s"  # RetryInfo.retryDelay of a 429
    latency_ms: float = 0
    first_byte_delay_ms: float = 0  # streams: before the first event
    event_delay_ms: float = 0  # streams: between events
    stream_events: int = 3  # how many events a text answer is split into
    text: str = "Hello from fake Gemini"
    # Model ids served (without "models/"); None serves any name.
    models: tuple[str, ...] | None = DEFAULT_MODELS
    api_versions: tuple[str, ...] = ("v1beta",)
    model_version: str | None = None  # reported modelVersion; None: the requested model
    cached_tokens: int = 0  # usageMetadata.cachedContentTokenCount (part of the prompt count)
    thoughts_tokens: int = 0  # usageMetadata.thoughtsTokenCount
    thought_text: str = "Thinking it over."  # sent as a thought part when includeThoughts
    block_reason: str | None = None  # e.g. "SAFETY": promptFeedback.blockReason, no candidates
    finish_reason: str | None = None  # force e.g. "SAFETY" or "RECITATION" (no content then)
    parallel_calls: bool = False  # answer two functionCall parts instead of one
    function_call_ids: bool = False  # give functionCall parts an "id"
    # Gemini 3 behaviour: signatures on function calls, required back in the current turn.
    # None: like the real service, only for models whose name starts with "gemini-3".
    thought_signatures: bool | None = None


# --------------------------------------------------------------------------------------------
# The request schema: the v1beta messages as field tables (proto name, kind, type, repeated).
# --------------------------------------------------------------------------------------------

PKG: Final = "google.ai.generativelanguage.v1beta"


@dataclass(frozen=True)
class Field:
    name: str  # proto field name, the canonical key of parsed requests
    kind: str  # string bytes bool int32 int64 float double enum message map struct value duration
    ref: str = ""  # message name (message, map values) or enum name
    repeated: bool = False
    json_name: str = ""  # when it is not the lowerCamelCase of name
    oneof: str = ""


ENUMS: Final[dict[str, tuple[str, ...]]] = {
    "Type": (
        *("TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER"),
        *("BOOLEAN", "ARRAY", "OBJECT", "NULL"),
    ),
    "ExecutableCode.Language": ("LANGUAGE_UNSPECIFIED", "PYTHON"),
    "CodeExecutionResult.Outcome": (
        "OUTCOME_UNSPECIFIED",
        "OUTCOME_OK",
        "OUTCOME_FAILED",
        "OUTCOME_DEADLINE_EXCEEDED",
    ),
    "FunctionResponse.Scheduling": ("SCHEDULING_UNSPECIFIED", "SILENT", "WHEN_IDLE", "INTERRUPT"),
    "FunctionCallingConfig.Mode": ("MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"),
    "FunctionDeclaration.Behavior": ("UNSPECIFIED", "BLOCKING", "NON_BLOCKING"),
    "DynamicRetrievalConfig.Mode": ("MODE_UNSPECIFIED", "MODE_DYNAMIC"),
    "Tool.ComputerUse.Environment": ("ENVIRONMENT_UNSPECIFIED", "ENVIRONMENT_BROWSER"),
    "HarmCategory": (
        "HARM_CATEGORY_UNSPECIFIED",
        "HARM_CATEGORY_DEROGATORY",
        "HARM_CATEGORY_TOXICITY",
        "HARM_CATEGORY_VIOLENCE",
        "HARM_CATEGORY_SEXUAL",
        "HARM_CATEGORY_MEDICAL",
        "HARM_CATEGORY_DANGEROUS",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
        "HARM_CATEGORY_CIVIC_INTEGRITY",
    ),
    "SafetySetting.HarmBlockThreshold": (
        "HARM_BLOCK_THRESHOLD_UNSPECIFIED",
        "BLOCK_LOW_AND_ABOVE",
        "BLOCK_MEDIUM_AND_ABOVE",
        "BLOCK_ONLY_HIGH",
        "BLOCK_NONE",
        "OFF",
    ),
    "GenerationConfig.Modality": ("MODALITY_UNSPECIFIED", "TEXT", "IMAGE", "AUDIO"),
    "GenerationConfig.MediaResolution": (
        "MEDIA_RESOLUTION_UNSPECIFIED",
        "MEDIA_RESOLUTION_LOW",
        "MEDIA_RESOLUTION_MEDIUM",
        "MEDIA_RESOLUTION_HIGH",
    ),
    # Not in the public proto yet, but documented and accepted for Gemini 3 (thinkingLevel).
    "ThinkingConfig.ThinkingLevel": (
        *("THINKING_LEVEL_UNSPECIFIED", "MINIMAL"),
        *("LOW", "MEDIUM", "HIGH"),
    ),
}
_ENUM_LOOKUP: Final = {
    name: {value.upper(): value for value in values} for name, values in ENUMS.items()
}

_DATA = "data"  # the Part.data oneof

MESSAGES: Final[dict[str, tuple[Field, ...]]] = {
    "GenerateContentRequest": (
        Field("model", "string"),
        Field("system_instruction", "message", "Content"),
        Field("contents", "message", "Content", repeated=True),
        Field("tools", "message", "Tool", repeated=True),
        Field("tool_config", "message", "ToolConfig"),
        Field("safety_settings", "message", "SafetySetting", repeated=True),
        Field("generation_config", "message", "GenerationConfig"),
        Field("cached_content", "string"),
    ),
    "Content": (Field("parts", "message", "Part", repeated=True), Field("role", "string")),
    "Part": (
        Field("text", "string", oneof=_DATA),
        Field("inline_data", "message", "Blob", oneof=_DATA),
        Field("function_call", "message", "FunctionCall", oneof=_DATA),
        Field("function_response", "message", "FunctionResponse", oneof=_DATA),
        Field("file_data", "message", "FileData", oneof=_DATA),
        Field("executable_code", "message", "ExecutableCode", oneof=_DATA),
        Field("code_execution_result", "message", "CodeExecutionResult", oneof=_DATA),
        Field("video_metadata", "message", "VideoMetadata", oneof="metadata"),
        Field("thought", "bool"),
        Field("thought_signature", "bytes"),
        Field("part_metadata", "struct"),
    ),
    "Blob": (Field("mime_type", "string"), Field("data", "bytes")),
    "FunctionResponseBlob": (Field("mime_type", "string"), Field("data", "bytes")),
    "FileData": (Field("mime_type", "string"), Field("file_uri", "string")),
    "VideoMetadata": (
        Field("start_offset", "duration"),
        Field("end_offset", "duration"),
        Field("fps", "double"),
    ),
    "ExecutableCode": (
        Field("language", "enum", "ExecutableCode.Language"),
        Field("code", "string"),
    ),
    "CodeExecutionResult": (
        Field("outcome", "enum", "CodeExecutionResult.Outcome"),
        Field("output", "string"),
    ),
    "FunctionCall": (Field("id", "string"), Field("name", "string"), Field("args", "struct")),
    "FunctionResponse": (
        Field("id", "string"),
        Field("name", "string"),
        Field("response", "struct"),
        Field("parts", "message", "FunctionResponsePart", repeated=True),
        Field("will_continue", "bool"),
        Field("scheduling", "enum", "FunctionResponse.Scheduling"),
    ),
    "FunctionResponsePart": (Field("inline_data", "message", "FunctionResponseBlob", oneof=_DATA),),
    "Tool": (
        Field("function_declarations", "message", "FunctionDeclaration", repeated=True),
        Field("google_search_retrieval", "message", "GoogleSearchRetrieval"),
        Field("code_execution", "message", "Empty"),
        Field("google_search", "message", "Tool.GoogleSearch"),
        Field("computer_use", "message", "Tool.ComputerUse"),
        Field("url_context", "message", "Empty"),
        Field("file_search", "message", "FileSearch"),
        Field("google_maps", "message", "GoogleMaps"),
    ),
    "Empty": (),
    "Tool.GoogleSearch": (Field("time_range_filter", "message", "Interval"),),
    "Interval": (Field("start_time", "string"), Field("end_time", "string")),
    "Tool.ComputerUse": (
        Field("environment", "enum", "Tool.ComputerUse.Environment"),
        Field("excluded_predefined_functions", "string", repeated=True),
    ),
    "GoogleMaps": (Field("enable_widget", "bool"),),
    "FileSearch": (
        Field("retrieval_resources", "message", "FileSearch.RetrievalResource", repeated=True),
        Field("retrieval_config", "message", "FileSearch.RetrievalConfig"),
    ),
    "FileSearch.RetrievalResource": (Field("rag_store_name", "string"),),
    "FileSearch.RetrievalConfig": (
        Field("top_k", "int32"),
        Field("metadata_filter", "string"),
    ),
    "GoogleSearchRetrieval": (
        Field("dynamic_retrieval_config", "message", "DynamicRetrievalConfig"),
    ),
    "DynamicRetrievalConfig": (
        Field("mode", "enum", "DynamicRetrievalConfig.Mode"),
        Field("dynamic_threshold", "float"),
    ),
    "ToolConfig": (
        Field("function_calling_config", "message", "FunctionCallingConfig"),
        Field("retrieval_config", "message", "RetrievalConfig"),
    ),
    "RetrievalConfig": (
        Field("lat_lng", "message", "LatLng"),
        Field("language_code", "string"),
    ),
    "LatLng": (Field("latitude", "double"), Field("longitude", "double")),
    "FunctionCallingConfig": (
        Field("mode", "enum", "FunctionCallingConfig.Mode"),
        Field("allowed_function_names", "string", repeated=True),
    ),
    "FunctionDeclaration": (
        Field("name", "string"),
        Field("description", "string"),
        Field("parameters", "message", "Schema"),
        Field("parameters_json_schema", "value"),
        Field("response", "message", "Schema"),
        Field("response_json_schema", "value"),
        Field("behavior", "enum", "FunctionDeclaration.Behavior"),
    ),
    # Gemini's Schema: an OpenAPI 3.0 subset. Nothing else is accepted here.
    "Schema": (
        Field("type", "enum", "Type"),
        Field("format", "string"),
        Field("title", "string"),
        Field("description", "string"),
        Field("nullable", "bool"),
        Field("enum", "string", repeated=True),
        Field("items", "message", "Schema"),
        Field("max_items", "int64"),
        Field("min_items", "int64"),
        Field("properties", "map", "Schema"),
        Field("required", "string", repeated=True),
        Field("min_properties", "int64"),
        Field("max_properties", "int64"),
        Field("minimum", "double"),
        Field("maximum", "double"),
        Field("min_length", "int64"),
        Field("max_length", "int64"),
        Field("pattern", "string"),
        Field("example", "value"),
        Field("any_of", "message", "Schema", repeated=True),
        Field("property_ordering", "string", repeated=True),
        Field("default", "value"),
    ),
    "SafetySetting": (
        Field("category", "enum", "HarmCategory"),
        Field("threshold", "enum", "SafetySetting.HarmBlockThreshold"),
    ),
    "GenerationConfig": (
        Field("candidate_count", "int32"),
        Field("stop_sequences", "string", repeated=True),
        Field("max_output_tokens", "int32"),
        Field("temperature", "float"),
        Field("top_p", "float"),
        Field("top_k", "int32"),
        Field("seed", "int32"),
        Field("response_mime_type", "string"),
        Field("response_schema", "message", "Schema"),
        # Two fields share the JSON-schema role; these json_names are the proto's own.
        Field("response_json_schema", "value", json_name="_responseJsonSchema"),
        Field("response_json_schema_ordered", "value", json_name="responseJsonSchema"),
        Field("presence_penalty", "float"),
        Field("frequency_penalty", "float"),
        Field("response_logprobs", "bool"),
        Field("logprobs", "int32"),
        Field("enable_enhanced_civic_answers", "bool"),
        Field("response_modalities", "enum", "GenerationConfig.Modality", repeated=True),
        Field("speech_config", "message", "SpeechConfig"),
        Field("thinking_config", "message", "ThinkingConfig"),
        Field("image_config", "message", "ImageConfig"),
        Field("media_resolution", "enum", "GenerationConfig.MediaResolution"),
    ),
    "SpeechConfig": (
        Field("voice_config", "message", "VoiceConfig"),
        Field("multi_speaker_voice_config", "message", "MultiSpeakerVoiceConfig"),
        Field("language_code", "string"),
    ),
    "VoiceConfig": (Field("prebuilt_voice_config", "message", "PrebuiltVoiceConfig"),),
    "PrebuiltVoiceConfig": (Field("voice_name", "string"),),
    "MultiSpeakerVoiceConfig": (
        Field("speaker_voice_configs", "message", "SpeakerVoiceConfig", repeated=True),
    ),
    "SpeakerVoiceConfig": (
        Field("speaker", "string"),
        Field("voice_config", "message", "VoiceConfig"),
    ),
    "ThinkingConfig": (
        Field("include_thoughts", "bool"),
        Field("thinking_budget", "int32"),
        Field("thinking_level", "enum", "ThinkingConfig.ThinkingLevel"),
    ),
    "ImageConfig": (Field("aspect_ratio", "string"),),
}

_WELL_KNOWN: Final = {
    "struct": "type.googleapis.com/google.protobuf.Struct",
    "value": "type.googleapis.com/google.protobuf.Value",
    "duration": "type.googleapis.com/google.protobuf.Duration",
}
_SCALAR_TYPES: Final = {
    "string": "TYPE_STRING",
    "bytes": "TYPE_BYTES",
    "bool": "TYPE_BOOL",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float": "TYPE_FLOAT",
    "double": "TYPE_DOUBLE",
}
_INT_RANGES: Final = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


# Both spellings reach the same field, as with any proto3 JSON parser.
_FIELD_LOOKUP: Final[dict[str, dict[str, Field]]] = {
    message: {
        **{f.name: f for f in fields},
        **{(f.json_name or _camel(f.name)): f for f in fields},
    }
    for message, fields in MESSAGES.items()
}


@dataclass(frozen=True)
class MapEntry:
    """A path step into a proto map: rendered ``[index].value`` or ``[key]`` by error kind."""

    key: str
    index: int


PathStep = str | int | MapEntry
Path = tuple[PathStep, ...]


def proto_path(path: Path) -> str:
    """The path as the JSON parser reports it: ``tools[0].parameters.properties[1].value``."""
    return _path_text(path, by_key=False)


def field_path(path: Path) -> str:
    """The path as semantic checks report it: map entries by key (``properties[city]``)."""
    return _path_text(path, by_key=True)


def _path_text(path: Path, by_key: bool) -> str:
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif isinstance(step, MapEntry):
            out += f"[{step.key}]" if by_key else f"[{step.index}].value"
        else:
            out += f".{step}" if out else step
    return out


# --------------------------------------------------------------------------------------------
# Errors in Google's shape.
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: HTTP status plus Google's ``{"error": {...}}`` body."""

    def __init__(
        self, code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def invalid_argument(message: str, details: list[dict[str, Any]] | None = None) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message, details)


def bad_request(violations: list[tuple[str, str]]) -> ApiError:
    """Parse errors: one message line and one fieldViolation per problem."""
    field_violations = [
        {"field": where, "description": text} if where else {"description": text}
        for where, text in violations
    ]
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": field_violations}
    ]
    return invalid_argument("\n".join(text for _, text in violations), details)


def api_key_invalid() -> ApiError:
    message = "API key not valid. Please pass a valid API key."
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": message,
        },
    ]
    return invalid_argument(message, details)


def missing_api_key() -> ApiError:
    return ApiError(
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity)."
        " Please use API Key or other form of API consumer identity to call this API.",
    )


def model_not_found(model: str, version: str, method: str) -> ApiError:
    return ApiError(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version {version}, or is not supported for"
        f" {method}. Call ListModels to see the list of available models and their supported"
        " methods.",
    )


def rate_limited(model: str, retry_delay: str) -> ApiError:
    return ApiError(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For more"
        " information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "10",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
        ],
    )


def server_error() -> ApiError:
    return ApiError(
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or report in"
        " https://developers.generativeai.google/guide/troubleshooting",
    )


def unavailable() -> ApiError:
    return ApiError(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


# --------------------------------------------------------------------------------------------
# Proto-JSON parsing: the first gate, like the service's JSON front end.
# --------------------------------------------------------------------------------------------


def _render_value(value: Any) -> str:
    return orjson.dumps(value).decode()


def _decode_base64(text: str) -> bytes | None:
    """Standard or URL-safe alphabet, padding optional (what proto-JSON bytes accept)."""
    body = text.rstrip("=")
    if len(body) % 4 == 1 or not re.fullmatch(r"[A-Za-z0-9+/_-]*", body):
        return None
    try:
        return base64.b64decode(body.replace("-", "+").replace("_", "/") + "=" * (-len(body) % 4))
    except binascii.Error:
        return None


class ProtoJsonParser:
    """Parse a request against the field tables; collect every violation, as the service does.

    Parsed messages use proto field names as keys and canonical enum names as values, so the
    rest of the fake never cares which spelling the client used.
    """

    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []

    def parse_request(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            text = 'Invalid JSON payload received. Unknown name "": Root element must be a message.'
            self.violations.append(("", text))
            return {}
        return self.message(body, "GenerateContentRequest", ())

    def message(self, value: dict[str, Any], message: str, path: Path) -> dict[str, Any]:
        fields = _FIELD_LOOKUP[message]
        out: dict[str, Any] = {}
        oneofs: dict[str, str] = {}
        for key, item in value.items():
            spec = fields.get(key)
            if spec is None:
                where = proto_path(path)
                at = f" at '{where}'" if where else ""
                text = (
                    f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.'
                )
                self.violations.append((where, text))
                continue
            if item is None:  # proto3 JSON: null means "not set"
                continue
            if spec.oneof:
                if spec.oneof in oneofs:
                    # Conservative: the exact text of this front-end error is unverified.
                    where = proto_path(path)
                    self.violations.append(
                        (
                            where,
                            f"Invalid value at '{where}' (oneof), oneof field '{spec.oneof}' is"
                            f" already set. Cannot set '{key}'",
                        )
                    )
                    continue
                oneofs[spec.oneof] = spec.name
            out[spec.name] = self.field(item, spec, (*path, spec.name))
        return out

    def field(self, value: Any, spec: Field, path: Path) -> Any:
        if spec.kind == "map":
            if not isinstance(value, dict):
                return self._invalid(path, spec, value)
            return {
                key: self._single(item, spec, (*path, MapEntry(key, index)))
                for index, (key, item) in enumerate(value.items())
            }
        if spec.repeated:
            if not isinstance(value, list):
                # Conservative: a lone value where a list belongs is refused.
                return self._invalid(path, spec, value)
            return [self._single(item, spec, (*path, i)) for i, item in enumerate(value)]
        return self._single(value, spec, path)

    def _single(self, value: Any, spec: Field, path: Path) -> Any:
        kind = spec.kind
        if kind in ("message", "map"):
            if not isinstance(value, dict):
                return self._invalid(path, spec, value)
            return self.message(value, spec.ref, path)
        if kind == "value":
            return value
        if kind == "struct":
            return value if isinstance(value, dict) else self._invalid(path, spec, value)
        if kind == "enum":
            return self._enum(value, spec, path)
        if kind == "string":
            return value if isinstance(value, str) else self._invalid(path, spec, value)
        if kind == "bool":
            return value if isinstance(value, bool) else self._invalid(path, spec, value)
        if kind == "bytes":
            if isinstance(value, str) and _decode_base64(value) is not None:
                return value
            text = f"Invalid value at '{proto_path(path)}' (TYPE_BYTES), "
            text += f"Base64 decoding failed for {_render_value(value)}"
            self.violations.append((proto_path(path), text))
            return None
        if kind == "duration":
            ok = isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d{1,9})?s", value)
            return value if ok else self._invalid(path, spec, value)
        return self._number(value, spec, path)

    def _number(self, value: Any, spec: Field, path: Path) -> Any:
        number: float | int | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):  # proto3 JSON allows numbers as strings
            with contextlib.suppress(ValueError):
                number = float(value) if spec.kind in ("float", "double") else int(value)
        if number is None:
            return self._invalid(path, spec, value)
        if spec.kind in _INT_RANGES:
            low, high = _INT_RANGES[spec.kind]
            if isinstance(number, float) and not number.is_integer():
                return self._invalid(path, spec, value)
            if not low <= int(number) <= high:
                return self._invalid(path, spec, value)
            return int(number)
        return float(number)

    def _enum(self, value: Any, spec: Field, path: Path) -> Any:
        names = ENUMS[spec.ref]
        if isinstance(value, str):
            # Enum names are matched case-insensitively ("string" works like "STRING").
            canonical = _ENUM_LOOKUP[spec.ref].get(value.upper())
            if canonical is not None:
                return canonical
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            return names[value]
        return self._invalid(path, spec, value)

    def _invalid(self, path: Path, spec: Field, value: Any) -> None:
        if spec.kind in ("message", "map", "enum"):
            label = f"type.googleapis.com/{PKG}.{spec.ref}"
        else:
            label = _WELL_KNOWN.get(spec.kind) or _SCALAR_TYPES[spec.kind]
        where = proto_path(path)
        self.violations.append(
            (where, f"Invalid value at '{where}' ({label}), {_render_value(value)}")
        )
        return None


# --------------------------------------------------------------------------------------------
# Semantic checks: what the service rejects once the JSON has parsed.
# --------------------------------------------------------------------------------------------

_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_RESPONSE_MIME_TYPES: Final = (
    "text/plain",
    "application/json",
    "application/xml",
    "application/yaml",
    "text/x.enum",
)
# Conservative: the documented inline media types; anything else is "Unsupported".
_MEDIA_TYPES: Final = frozenset(
    {"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif", "application/pdf"}
)
_MEDIA_FAMILIES: Final = ("audio/", "video/", "text/")
_THOUGHT_SIGNATURE_HELP: Final = "https://ai.google.dev/gemini-api/docs/thought-signatures"


def _supported_mime(mime: str) -> bool:
    return mime in _MEDIA_TYPES or mime.startswith(_MEDIA_FAMILIES)


_PART_DATA: Final = tuple(f.name for f in MESSAGES["Part"] if f.oneof == _DATA)


def _part_kind(part: dict[str, Any]) -> str | None:
    """Which member of the Part.data oneof is set (the parser allows at most one)."""
    return next((name for name in _PART_DATA if name in part), None)


def declarations(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for tool in request.get("tools", []) for d in tool.get("function_declarations", [])]


class RequestChecker:
    """Field-level checks reported as ``* GenerateContentRequest.<path>: <problem>`` lines."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.problems: list[str] = []

    def problem(self, path: Path, text: str) -> None:
        self.problems.append(f"* GenerateContentRequest.{field_path(path)}: {text}\n")

    def run(self) -> ApiError | None:
        request = self.request
        contents = request.get("contents", [])
        if not contents:
            self.problem(("contents",), "contents is not specified")
        for i, content in enumerate(contents):
            self.content(content, ("contents", i))
        if "system_instruction" in request:
            self.content(request["system_instruction"], ("system_instruction",))
        self.tools()
        self.generation_config(request.get("generation_config", {}))
        if self.problems:
            return invalid_argument("".join(self.problems))
        return None

    def content(self, content: dict[str, Any], path: Path) -> None:
        parts = content.get("parts", [])
        if not parts:
            self.problem((*path, "parts"), "contents.parts must not be empty.")
        for j, part in enumerate(parts):
            where = (*path, "parts", j)
            kind = _part_kind(part)
            if kind is None or part.get("text") == "":
                # An empty string leaves the oneof unset for the service (conservative).
                self.problem(
                    (*where, "data"), "required oneof field 'data' must have one initialized field"
                )
            elif kind == "inline_data":
                mime = part["inline_data"].get("mime_type", "")
                if not _supported_mime(mime):
                    self.problem(
                        (*where, "inline_data", "mime_type"), f"Unsupported MIME type: {mime}"
                    )
            elif kind == "file_data" and not part["file_data"].get("file_uri"):
                self.problem((*where, "file_data", "file_uri"), "missing field.")
            elif kind in ("function_call", "function_response") and not part[kind].get("name"):
                self.problem((*where, kind, "name"), "missing field.")

    def tools(self) -> None:
        seen_names: set[str] = set()
        for t, tool in enumerate(self.request.get("tools", [])):
            for d, decl in enumerate(tool.get("function_declarations", [])):
                path: Path = ("tools", t, "function_declarations", d)
                name = decl.get("name", "")
                if not _FUNCTION_NAME.fullmatch(name):
                    self.problem(
                        (*path, "name"),
                        "Invalid function name. Must start with a letter or an underscore. Must"
                        " be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.) or dashes (-),"
                        " with a maximum length of 64.",
                    )
                elif name in seen_names:
                    self.problem((*path, "name"), f"Duplicate function declaration found: {name}")
                seen_names.add(name)
                if "parameters" in decl and "parameters_json_schema" in decl:
                    # Conservative: one parameter description per function.
                    self.problem(
                        (*path, "parameters_json_schema"),
                        "parameters and parameters_json_schema cannot both be set.",
                    )
                for key in ("parameters", "response"):
                    if key in decl:
                        self.schema(decl[key], (*path, key))
        config = self.request.get("tool_config", {}).get("function_calling_config", {})
        self.function_calling_config(config, seen_names)

    def function_calling_config(self, config: dict[str, Any], names: set[str]) -> None:
        path: Path = ("tool_config", "function_calling_config")
        mode = config.get("mode", "MODE_UNSPECIFIED")
        allowed = config.get("allowed_function_names", [])
        if mode in ("ANY", "VALIDATED") and not names:
            # Conservative: forcing a call needs something to call.
            self.problem((*path, "mode"), f"mode {mode} requires function_declarations.")
        if allowed and mode not in ("ANY", "VALIDATED"):
            self.problem((*path, "allowed_function_names"), "should only be set when mode is ANY.")
        for i, name in enumerate(allowed):
            if name not in names:
                self.problem(
                    (*path, "allowed_function_names", i), f"function {name} is not declared."
                )

    def schema(self, schema: dict[str, Any], path: Path) -> None:
        kind = schema.get("type", "TYPE_UNSPECIFIED")
        properties = schema.get("properties", {})
        if kind == "ARRAY" and "items" not in schema:
            self.problem((*path, "items"), "missing field.")
        if kind == "OBJECT" and not properties:
            self.problem((*path, "properties"), "should be non-empty for OBJECT type")
        if schema.get("enum") and kind != "STRING":
            self.problem((*path, "enum"), "only allowed for STRING type")
        for i, name in enumerate(schema.get("required", [])):
            if name not in properties:
                self.problem((*path, "required", i), "property is not defined")
        for index, (key, child) in enumerate(properties.items()):
            self.schema(child, (*path, "properties", MapEntry(key, index)))
        if "items" in schema:
            self.schema(schema["items"], (*path, "items"))
        for i, child in enumerate(schema.get("any_of", [])):
            self.schema(child, (*path, "any_of", i))

    def generation_config(self, config: dict[str, Any]) -> None:
        path: Path = ("generation_config",)
        ranges: dict[str, tuple[float, float]] = {
            "temperature": (0.0, 2.0),
            "top_p": (0.0, 1.0),
            "top_k": (1, 2**31 - 1),
            "candidate_count": (1, 8),
            "max_output_tokens": (1, 2**31 - 1),
            "presence_penalty": (-2.0, 2.0),
            "frequency_penalty": (-2.0, 2.0),
            "logprobs": (0, 20),
        }
        for key, (low, high) in ranges.items():
            value = config.get(key)
            if value is not None and not (low <= value <= high and math.isfinite(value)):
                # Conservative: the service's own wording for these is not documented.
                self.problem((*path, key), f"must be in the range [{low}, {high}].")
        if len(config.get("stop_sequences", [])) > 5:
            self.problem((*path, "stop_sequences"), "at most 5 stop sequences are allowed.")
        mime = config.get("response_mime_type", "")
        if mime and mime not in _RESPONSE_MIME_TYPES:
            self.problem(
                (*path, "response_mime_type"),
                "allowed mimetypes are `text/plain`, `application/json`, `application/xml`,"
                " `application/yaml` and `text/x.enum`.",
            )
        has_json_schema = any(
            k in config for k in ("response_json_schema", "response_json_schema_ordered")
        )
        if "response_schema" in config:
            if mime not in ("application/json", "text/x.enum"):
                self.problem(
                    (*path, "response_schema"),
                    "response_mime_type must be application/json or text/x.enum when"
                    " response_schema is set.",
                )
            if has_json_schema:
                self.problem(
                    (*path, "response_schema"),
                    "response_schema and response_json_schema cannot both be set.",
                )
            self.schema(config["response_schema"], (*path, "response_schema"))
        elif has_json_schema and mime != "application/json":
            self.problem(
                (*path, "response_json_schema"),
                "response_mime_type must be application/json when response_json_schema is set.",
            )


def check_conversation(request: dict[str, Any], model: str, signatures: bool) -> ApiError | None:
    """Roles and function call/response turns, with the service's own messages."""
    contents: list[dict[str, Any]] = request.get("contents", [])
    for content in contents:
        if content.get("role", "user") not in ("user", "model", ""):
            return invalid_argument("Please use a valid role: user, model.")
    previous: dict[str, Any] | None = None
    for content in contents:
        role = content.get("role") or "user"
        calls = [p for p in content["parts"] if "function_call" in p]
        responses = [p for p in content["parts"] if "function_response" in p]
        if (calls and role != "model") or (responses and role != "user"):
            # Conservative: calls belong to model turns and responses to user turns.
            kind = "function call" if calls and role != "model" else "function response"
            owner = "model" if kind == "function call" else "user"
            return invalid_argument(f"Please ensure that {kind} parts are in a {owner} turn.")
        if calls and (previous is None or (previous.get("role") or "user") != "user"):
            return invalid_argument(
                "Please ensure that function call turn comes immediately after a user turn or"
                " after a function response turn."
            )
        if responses:
            previous_calls = (
                [p for p in previous["parts"] if "function_call" in p] if previous else []
            )
            if not previous_calls:
                return invalid_argument(
                    "Please ensure that function response turn comes immediately after a"
                    " function call turn."
                )
            if len(previous_calls) != len(responses):
                return invalid_argument(
                    "Please ensure that the number of function response parts is equal to the"
                    " number of function call parts of the function call turn."
                )
        previous = content
    if signatures:
        error = check_thought_signatures(contents)
        if error is not None:
            return error
    mime = request.get("generation_config", {}).get("response_mime_type")
    if declarations(request) and mime == "application/json" and not model.startswith("gemini-3"):
        # Gemini before 3 cannot combine function calling with JSON output.
        return invalid_argument(
            "Function calling with a response mime type: 'application/json' is unsupported"
        )
    return None


def _fake_signature(name: str) -> str:
    return base64.b64encode(f"fake-gemini-thought:{name}".encode()).decode()


def check_thought_signatures(contents: list[dict[str, Any]]) -> ApiError | None:
    """Gemini 3: in the current turn each step's first function call carries its signature.

    The current turn starts after the last user content that is not only function responses.
    """
    start = 0
    for i, content in enumerate(contents):
        parts = content["parts"]
        if (content.get("role") or "user") == "user" and not all(
            "function_response" in p for p in parts
        ):
            start = i + 1
    for i in range(start, len(contents)):
        content = contents[i]
        calls = [p for p in content["parts"] if "function_call" in p]
        if (content.get("role") or "user") != "model" or not calls:
            continue
        first = calls[0]
        signature = first.get("thought_signature")
        name = first["function_call"].get("name", "")
        if signature is None:
            return invalid_argument(
                "Function call is missing a thought_signature in functionCall parts. This is"
                " required for tools to work correctly, and missing thought_signature may lead"
                f" to degraded model performance. Additional data, function call `default_api:"
                f"{name}` , position {i + 1}. Please refer to {_THOUGHT_SIGNATURE_HELP} for"
                " more details."
            )
        decoded = _decode_base64(signature) or b""
        if signature not in DUMMY_THOUGHT_SIGNATURES and not decoded.startswith(
            b"fake-gemini-thought:"
        ):
            # Conservative wording: the service only says the signature does not verify.
            return invalid_argument("Corrupted thought signature.")
    return None


# --------------------------------------------------------------------------------------------
# Answers.
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\S+")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _texts(content: dict[str, Any]) -> Iterator[str]:
    for part in content.get("parts", []):
        if "text" in part:
            yield part["text"]
        elif "function_call" in part:
            yield _render_value(part["function_call"].get("args", {}))
        elif "function_response" in part:
            yield _render_value(part["function_response"].get("response", {}))


def prompt_tokens(request: dict[str, Any]) -> int:
    """A word count standing in for tokens; an inline or file part counts 258, like an image."""
    contents = list(request.get("contents", []))
    if "system_instruction" in request:
        contents.append(request["system_instruction"])
    words = sum(count_words(text) for content in contents for text in _texts(content))
    media = sum(
        1
        for content in contents
        for part in content.get("parts", [])
        if "inline_data" in part or "file_data" in part
    )
    return words + 258 * media


def sample_json(schema: Any, name: str = "value", root: Any = None, depth: int = 0) -> Any:
    """A deterministic value for a JSON-Schema-ish schema (Gemini Schema keys lowercased).

    Objects get their required properties (all of them when none is required); strings
    "example" (or the first enum value), integers 1, numbers 1.5, booleans true.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 8:
        return "example"
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and isinstance(root, dict):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key, {}) if isinstance(target, dict) else {}
        return sample_json(target, name, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    for key in ("any_of", "anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return sample_json(options[0], name, root, depth + 1)
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type", "")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    kind = str(kind).lower()
    if not kind or kind == "type_unspecified":
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        keys = required if isinstance(required, list) and required else list(properties)
        return {key: sample_json(properties.get(key, {}), key, root, depth + 1) for key in keys}
    if kind == "array":
        count = max(1, int(schema.get("min_items", schema.get("minItems", 1)) or 1))
        return [sample_json(schema.get("items", {}), name, root, depth + 1)] * count
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        high = schema.get("maximum")
        value: float = 1 if kind == "integer" else 1.5
        if isinstance(low, int | float):
            value = max(value, low)
        if isinstance(high, int | float):
            value = min(value, high)
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2024-01-01T00:00:00Z"
    if fmt == "date":
        return "2024-01-01"
    return "example"


@dataclass
class Candidate:
    parts: list[dict[str, Any]]
    finish_reason: str
    tokens: int


@dataclass
class Answer:
    """Everything one response (or one stream) says, before it is cut into events."""

    candidates: list[Candidate]
    prompt_tokens: int
    block_reason: str | None = None
    thoughts_tokens: int = 0


class Responder:
    """Deterministic answers from a parsed request and the current Behaviour."""

    def __init__(self, request: dict[str, Any], behaviour: Behaviour, signatures: bool) -> None:
        self.request = request
        self.behaviour = behaviour
        self.signatures = signatures
        self.config: dict[str, Any] = request.get("generation_config", {})

    def answer(self) -> Answer:
        b = self.behaviour
        prompt = prompt_tokens(self.request) + b.cached_tokens
        if b.block_reason:
            return Answer([], prompt, block_reason=b.block_reason)
        count = self.config.get("candidate_count", 1)
        thought = self._thought_part()
        candidates = [self._candidate(i, thought) for i in range(count)]
        thoughts = b.thoughts_tokens or (count_words(b.thought_text) if thought else 0)
        return Answer(candidates, prompt, thoughts_tokens=thoughts)

    def _thought_part(self) -> dict[str, Any] | None:
        thinking = self.config.get("thinking_config", {})
        if thinking.get("include_thoughts"):
            return {"text": self.behaviour.thought_text, "thought": True}
        return None

    def _candidate(self, index: int, thought: dict[str, Any] | None) -> Candidate:
        b = self.behaviour
        if b.finish_reason and b.finish_reason not in ("STOP", "MAX_TOKENS"):
            return Candidate([], b.finish_reason, 0)
        prefix = [thought] if thought else []
        calls = self._function_calls()
        if calls:
            tokens = sum(1 + count_words(_render_value(c["functionCall"]["args"])) for c in calls)
            return Candidate(prefix + calls, b.finish_reason or "STOP", tokens)
        text, finish = self._cut(self._text(index))
        return Candidate([*prefix, {"text": text}], b.finish_reason or finish, count_words(text))

    def _text(self, index: int) -> str:
        responses = self._last_function_responses()
        if responses:
            said = "; ".join(
                f"{r.get('name', '')} returned {_render_value(r.get('response', {}))}"
                for r in responses
            )
            return f"Function results: {said}"
        mime = self.config.get("response_mime_type", "")
        schema = self._response_schema()
        if mime == "application/json":
            value = sample_json(schema) if schema is not None else {"answer": self.behaviour.text}
            return _render_value(value)
        if mime == "text/x.enum" and schema is not None:
            return str(sample_json(schema))
        suffix = f" (candidate {index + 1})" if index else ""
        return self.behaviour.text + suffix

    def _response_schema(self) -> Any:
        for key in ("response_schema", "response_json_schema_ordered", "response_json_schema"):
            if key in self.config:
                return self.config[key]
        return None

    def _cut(self, text: str) -> tuple[str, str]:
        """Apply stopSequences (finish STOP) then maxOutputTokens (finish MAX_TOKENS)."""
        stops = [s for s in self.config.get("stop_sequences", []) if s]
        positions = [text.find(s) for s in stops if s in text]
        if positions:
            text = text[: min(positions)]
        limit = self.config.get("max_output_tokens")
        if limit is not None:
            words = list(_WORD.finditer(text))
            if len(words) > limit:
                return text[: words[limit - 1].end()], "MAX_TOKENS"
        return text, "STOP"

    def _last_function_responses(self) -> list[dict[str, Any]]:
        contents = self.request.get("contents", [])
        if not contents or (contents[-1].get("role") or "user") != "user":
            return []
        return [p["function_response"] for p in contents[-1]["parts"] if "function_response" in p]

    def _function_calls(self) -> list[dict[str, Any]]:
        decls = declarations(self.request)
        config = self.request.get("tool_config", {}).get("function_calling_config", {})
        if not decls or config.get("mode") == "NONE" or self._last_function_responses():
            return []
        allowed = config.get("allowed_function_names") or [d["name"] for d in decls]
        chosen = [d for name in allowed for d in decls if d["name"] == name]
        chosen = (chosen * 2)[:2] if self.behaviour.parallel_calls else chosen[:1]
        parts = []
        for i, decl in enumerate(chosen):
            call: dict[str, Any] = {"name": decl["name"], "args": self._args(decl)}
            if self.behaviour.function_call_ids:
                call["id"] = f"call-{i + 1}-{secrets.token_hex(4)}"
            part: dict[str, Any] = {"functionCall": call}
            if self.signatures and i == 0:  # parallel calls: only the first carries one
                part["thoughtSignature"] = _fake_signature(decl["name"])
            parts.append(part)
        return parts

    @staticmethod
    def _args(decl: dict[str, Any]) -> dict[str, Any]:
        schema = decl.get("parameters", decl.get("parameters_json_schema"))
        if not isinstance(schema, dict):
            return {}
        value = sample_json(schema)
        return value if isinstance(value, dict) else {}


def _usage(answer: Answer, b: Behaviour, final: bool) -> dict[str, Any]:
    prompt = answer.prompt_tokens
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    if final and answer.candidates:
        output = sum(c.tokens for c in answer.candidates)
        usage["candidatesTokenCount"] = output
        usage["totalTokenCount"] = prompt + output + answer.thoughts_tokens
    else:  # stream events before the last one, and blocked prompts, count the prompt only
        usage["totalTokenCount"] = prompt
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if b.cached_tokens:
        usage["cachedContentTokenCount"] = b.cached_tokens
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": b.cached_tokens}]
    if final and answer.thoughts_tokens and answer.candidates:
        usage["thoughtsTokenCount"] = answer.thoughts_tokens
    return usage


def _candidate_json(
    candidate: Candidate, index: int, parts: list[dict[str, Any]] | None, finish: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if parts:
        out["content"] = {"parts": parts, "role": "model"}
    if finish:
        out["finishReason"] = candidate.finish_reason
        if candidate.finish_reason == "SAFETY":
            out["safetyRatings"] = [
                {
                    "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                    "probability": "HIGH",
                    "blocked": True,
                }
            ]
    out["index"] = index
    return out


class Renderer:
    """Turns an Answer into GenerateContentResponse objects: one, or a stream of events."""

    def __init__(self, answer: Answer, behaviour: Behaviour, model: str) -> None:
        self.answer = answer
        self.behaviour = behaviour
        self.model_version = behaviour.model_version or model
        self.response_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")

    def _envelope(self, body: dict[str, Any], final: bool) -> dict[str, Any]:
        body["usageMetadata"] = _usage(self.answer, self.behaviour, final)
        body["modelVersion"] = self.model_version
        body["responseId"] = self.response_id
        return body

    def _blocked(self) -> dict[str, Any]:
        feedback = {
            "blockReason": self.answer.block_reason,
            "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
            ],
        }
        return self._envelope({"promptFeedback": feedback}, final=True)

    def whole(self) -> dict[str, Any]:
        if self.answer.block_reason:
            return self._blocked()
        candidates = [
            _candidate_json(c, i, c.parts, finish=True)
            for i, c in enumerate(self.answer.candidates)
        ]
        return self._envelope({"candidates": candidates}, final=True)

    def events(self) -> list[dict[str, Any]]:
        """Stream events: text in pieces, function calls whole, the last one finishing."""
        if self.answer.block_reason:
            return [self._blocked()]
        pieces = [self._pieces(c) for c in self.answer.candidates]
        count = max(len(p) for p in pieces)
        events = []
        for step in range(count):
            final = step == count - 1
            candidates = [
                _candidate_json(c, i, p[step] if step < len(p) else None, finish=final)
                for i, (c, p) in enumerate(zip(self.answer.candidates, pieces, strict=True))
            ]
            events.append(self._envelope({"candidates": candidates}, final=final))
        return events

    def _pieces(self, candidate: Candidate) -> list[list[dict[str, Any]]]:
        """Per event, this candidate's parts: thoughts first, texts split, calls whole."""
        out: list[list[dict[str, Any]]] = []
        for part in candidate.parts:
            text = part.get("text")
            if text is None or part.get("thought"):
                out.append([part])
                continue
            pieces = split_text(text, self.behaviour.stream_events) or [""]
            out.extend([{"text": piece}] for piece in pieces)
        return out or [[]]


# --------------------------------------------------------------------------------------------
# The ASGI application.
# --------------------------------------------------------------------------------------------

_ROUTE = re.compile(r"/(v1beta|v1|v1alpha)/models/([^/:]+):(generateContent|streamGenerateContent)")
# Google's system parameters; anything else cannot bind to GenerateContentRequest.
_SYSTEM_PARAMS: Final = frozenset({"alt", "$alt", "prettyPrint", "$prettyPrint", "fields"})
_JSON: Final = "application/json; charset=UTF-8"


def _not_found_page(path: str) -> bytes:
    # What Google's front end answers for a URL no API serves: HTML, not JSON.
    return (
        "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1"
        f"</title><p><b>404.</b> <ins>That\u2019s an error.</ins><p>The requested URL <code>{path}"
        "</code> was not found on this server.  <ins>That\u2019s all we know.</ins>\n"
    ).encode()


@dataclass
class Call:
    """One routed request."""

    version: str
    model: str
    method: str  # generateContent | streamGenerateContent
    alt: str  # "" (JSON) or "sse"


class GeminiApp(FakeApp):
    """The raw ASGI app (orjson, no framework: cheap enough for benchmarks)."""

    def __init__(self, api_key: str, behaviour: Behaviour, recorder: Recorder) -> None:
        super().__init__()
        self.api_key = api_key
        self.behaviour = behaviour
        self.recorder = recorder

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen, _, _ = await read_request(scope, receive, self.recorder)
        try:
            await self._serve(scope, receive, send, seen)
        except ApiError as error:
            await send_bytes(send, error.code, orjson.dumps(error.body()), _JSON)
            seen.completed = True

    async def _serve(self, scope: Scope, receive: Receive, send: Send, seen: Seen) -> None:
        call = self._route(scope)
        if call is None:
            page = _not_found_page(scope["path"])
            await send_bytes(send, 404, page, "text/html; charset=UTF-8")
            seen.completed = True
            return
        b = self.behaviour
        if b.mode == "hang":
            seen.client_gone = await self.hanging.hold(send, receive)
            return
        await sleep_ms(b.latency_ms)
        self._authenticate(scope)
        if seen.body and seen.json is None:  # not JSON, or a bare null
            raise bad_request([("", "Invalid JSON payload received. Unexpected token.")])
        parser = ProtoJsonParser()
        request = parser.parse_request(seen.json if seen.body else {})
        if parser.violations:
            raise bad_request(parser.violations)
        if b.models is not None and call.model not in b.models:
            raise model_not_found(call.model, call.version, call.method)
        signatures = (
            b.thought_signatures
            if b.thought_signatures is not None
            else call.model.startswith("gemini-3")
        )
        error = RequestChecker(request).run() or check_conversation(request, call.model, signatures)
        if error is not None:
            raise error
        if "cached_content" in request:
            raise ApiError(
                403, "PERMISSION_DENIED", "CachedContent not found (or permission denied)"
            )
        self._fail_on_purpose(call)
        renderer = Renderer(Responder(request, b, signatures).answer(), b, call.model)
        if call.method == "generateContent" and call.alt != "sse":
            await self._send_whole(renderer, send, receive)
            seen.completed = self.behaviour.mode != "stream_error"
        else:
            await self._stream(renderer, call, seen, send, receive)

    def _route(self, scope: Scope) -> Call | None:
        match = _ROUTE.fullmatch(scope["path"])
        if match is None or scope["method"] != "POST":
            return None
        version, model, method = match.groups()
        if version not in self.behaviour.api_versions:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"fake Gemini serves API versions {', '.join(self.behaviour.api_versions)} only;"
                f" /{version} is not modelled (see Behaviour.api_versions).",
            )
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        names = [name for name, _ in query]
        if "key" in names:
            raise invalid_argument(
                "fake Gemini refuses the API key as a `key` query parameter (URLs get logged);"
                " send it in the x-goog-api-key header."
            )
        for name in names:
            if name not in _SYSTEM_PARAMS:
                raise bad_request(
                    [
                        (
                            "",
                            f'Invalid JSON payload received. Unknown name "{name}": Cannot bind'
                            f" query parameter. Field '{name}' could not be found in request"
                            " message.",
                        )
                    ]
                )
        alt = next((value for name, value in query if name in ("alt", "$alt")), "")
        return Call(version, model, method, alt)

    def _authenticate(self, scope: Scope) -> None:
        key = header(scope, b"x-goog-api-key")
        if key is None:
            raise missing_api_key()
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            raise api_key_invalid()

    def _fail_on_purpose(self, call: Call) -> None:
        mode = self.behaviour.mode
        if mode == "rate_limited":
            raise rate_limited(call.model, self.behaviour.retry_delay)
        if mode == "server_error":
            raise server_error()
        if mode == "unavailable":
            raise unavailable()
        if mode == "invalid_argument":
            raise invalid_argument(self.behaviour.error_message)
        if mode not in MODES:  # a typo in a test must not pass for "ok"
            raise ApiError(500, "INTERNAL", f"fake Gemini: unknown Behaviour.mode {mode!r}")

    async def _send_whole(self, renderer: Renderer, send: Send, receive: Receive) -> None:
        payload = orjson.dumps(renderer.whole())
        if self.behaviour.mode != "stream_error":
            await send_bytes(send, 200, payload, _JSON)
            return
        await send_half_then_drop(send, receive, payload, _JSON)

    async def _stream(
        self, renderer: Renderer, call: Call, seen: Seen, send: Send, receive: Receive
    ) -> None:
        b = self.behaviour
        events = [orjson.dumps(event) for event in renderer.events()]
        sse = call.alt == "sse"
        if sse:
            framed = [b"data: " + event + SSE_SEPARATOR for event in events]
        else:  # without alt=sse the service streams one JSON array
            framed = [(b"[" if i == 0 else b",\r\n") + e for i, e in enumerate(events)]
            framed[-1] += b"]"
        stream = StreamSender(send, receive, seen)
        try:
            await stream.start(200, "text/event-stream" if sse else _JSON, [])
            await sleep_ms(b.first_byte_delay_ms)
            for i, chunk in enumerate(framed):
                if i:
                    await sleep_ms(b.event_delay_ms)
                if b.mode == "stream_error" and i == max(1, len(framed) // 2):
                    await stream.close()  # the fake hangs up: not a client that went away
                    await drop_connection(send, receive)
                    return
                if not await stream.chunk(chunk):
                    return
            if b.mode == "stream_error":  # a one-event stream: still never end it cleanly
                await stream.close()
                await drop_connection(send, receive)
                return
            await stream.end()
        finally:
            await stream.close()


# --------------------------------------------------------------------------------------------
# The runner.
# --------------------------------------------------------------------------------------------


class FakeGemini(FakeServer[GeminiApp]):
    """The fake on a loopback port in its own thread: ``with FakeGemini() as fake: ...``."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        behaviour: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(GeminiApp(api_key, behaviour or Behaviour(), Recorder()), host, port)

    @property
    def api_key(self) -> str:
        return self.app.api_key

    @property
    def behaviour(self) -> Behaviour:
        return self.app.behaviour

    @property
    def recorder(self) -> Recorder:
        return self.app.recorder

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1beta"

    def reset(self) -> None:
        """Default behaviour and an empty record (between tests sharing one server)."""
        restore_defaults(self.behaviour, Behaviour())
        self.recorder.clear()


__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_MODELS",
    "MODES",
    "ApiError",
    "Behaviour",
    "FakeGemini",
    "GeminiApp",
    "ProtoJsonParser",
    "sample_json",
]
