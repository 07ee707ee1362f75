"""The Gemini fake (local/fakes/gemini.py) driven by the official google-genai SDK.

Whatever Berry's Gemini translation is later tested against must parse with the real SDK and
refuse what the real service refuses; these tests hold the fake to both. Raw httpx calls cover
what the SDK never sends (unknown fields, JSON-Schema keys, a key in the URL).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from google import genai
from google.genai import errors, types
from pydantic import BaseModel

import support  # noqa: F401  (puts local/ on sys.path)
from dialect_support import wait_for
from fakes.gemini import DEFAULT_MODELS, FakeGemini

MODEL = "gemini-2.5-flash"
GEMINI_3 = "gemini-3-flash-preview"
TEXT = "Hello from fake Gemini"
# A 1x1 PNG: real image bytes, so the inline-data path carries binary content.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="
)
TYPE_ENUM = "type.googleapis.com/google.ai.generativelanguage.v1beta.Type"

# The SDK sends through httpx or, in recent versions, its fork httpx2: accept either's errors.
try:
    import httpx2

    TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover - older SDKs
    TRANSPORT_ERRORS = (httpx.TransportError,)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeGemini]:
    # One server for the module keeps it fast; `fake` resets it before each test.
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeGemini) -> FakeGemini:
    server.reset()
    return server


def make_client(fake: FakeGemini, key: str | None = None, **options: Any) -> genai.Client:
    http_options = types.HttpOptions(
        base_url=fake.root_url,
        api_version="v1beta",  # the SDK's own default is v1; Berry talks to v1beta
        retry_options=types.HttpRetryOptions(attempts=1),  # one request per call, no retries
        **options,
    )
    return genai.Client(api_key=key or fake.api_key, http_options=http_options)


@pytest.fixture
def client(fake: FakeGemini) -> genai.Client:
    return make_client(fake)


def no_auto_calls(**config: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True), **config
    )


def raw_post(
    fake: FakeGemini,
    body: Any,
    model: str = MODEL,
    method: str = "generateContent",
    key: str | None = "",
    params: dict[str, str] | None = None,
    version: str = "v1beta",
) -> httpx.Response:
    headers = {"x-goog-api-key": fake.api_key if key == "" else key} if key is not None else {}
    url = f"{fake.root_url}/{version}/models/{model}:{method}"
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(url, content=content, headers=headers, params=params, timeout=10)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def tool_body(parameters: dict[str, Any]) -> dict[str, Any]:
    declaration = {"name": "get_weather", "description": "Weather", "parameters": parameters}
    return {"contents": [user("weather?")], "tools": [{"functionDeclarations": [declaration]}]}


WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Weather for a city",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={
            "city": types.Schema(type=types.Type.STRING),
            "days": types.Schema(type=types.Type.INTEGER, minimum=3),
            "unit": types.Schema(type=types.Type.STRING, enum=["celsius", "fahrenheit"]),
        },
        required=["city", "days"],
    ),
)
TIME = types.FunctionDeclaration(
    name="get_time",
    description="Local time",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={"zone": types.Schema(type=types.Type.STRING, enum=["UTC", "CET"])},
        required=["zone"],
    ),
)


# --- generateContent ------------------------------------------------------------------------


def test_text_answer_and_what_was_sent(fake: FakeGemini, client: genai.Client) -> None:
    response = client.models.generate_content(model=MODEL, contents="Say hello")
    assert response.text == TEXT
    candidate = response.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.index == 0
    assert response.model_version == MODEL
    assert response.response_id
    seen = fake.recorder.last
    assert seen.path == f"/v1beta/models/{MODEL}:generateContent"
    assert seen.query == ""
    assert seen.headers["x-goog-api-key"] == fake.api_key
    assert seen.json["contents"] == [user("Say hello")]
    assert seen.wait_completed()


def test_system_instruction_and_multi_turn(fake: FakeGemini, client: genai.Client) -> None:
    contents = [
        types.Content(role="user", parts=[types.Part(text="my name is Ada")]),
        types.Content(role="model", parts=[types.Part(text="hello Ada")]),
        types.Content(role="user", parts=[types.Part(text="what is my name")]),
    ]
    config = types.GenerateContentConfig(system_instruction="answer in one word")
    response = client.models.generate_content(model=MODEL, contents=contents, config=config)
    assert response.text == TEXT
    body = fake.recorder.last.json
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["systemInstruction"]["parts"] == [{"text": "answer in one word"}]
    usage = response.usage_metadata
    assert usage is not None
    # Prompt "tokens" are words: 4 + 2 + 4 in the turns, 4 in the system instruction.
    assert usage.prompt_token_count == 14
    assert usage.candidates_token_count == 4
    assert usage.total_token_count == 18


def test_inline_image_bytes_arrive_intact(fake: FakeGemini, client: genai.Client) -> None:
    parts = [types.Part.from_bytes(data=PNG, mime_type="image/png"), types.Part(text="describe")]
    response = client.models.generate_content(model=MODEL, contents=parts)
    assert response.text == TEXT
    inline = fake.recorder.last.json["contents"][0]["parts"][0]["inlineData"]
    # The SDK spells this one mime_type: both spellings are valid proto JSON.
    assert inline.get("mimeType", inline.get("mime_type")) == "image/png"
    # The SDK sends URL-safe base64, which proto-JSON bytes fields accept.
    assert base64.urlsafe_b64decode(inline["data"]) == PNG
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == 258 + 1  # an image, one word


def test_stop_sequence_cuts_the_text(client: genai.Client) -> None:
    config = types.GenerateContentConfig(stop_sequences=["fake"])
    response = client.models.generate_content(model=MODEL, contents="hi", config=config)
    assert response.text == "Hello from "
    assert response.candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]


def test_max_output_tokens_cut_reports_max_tokens(client: genai.Client) -> None:
    config = types.GenerateContentConfig(max_output_tokens=2)
    response = client.models.generate_content(model=MODEL, contents="hi", config=config)
    assert response.text == "Hello from"
    candidate = response.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == types.FinishReason.MAX_TOKENS
    assert response.usage_metadata is not None
    assert response.usage_metadata.candidates_token_count == 2


def test_candidate_count_gives_indexed_candidates(client: genai.Client) -> None:
    config = types.GenerateContentConfig(candidate_count=2)
    response = client.models.generate_content(model=MODEL, contents="hi", config=config)
    candidates = response.candidates or []
    assert [c.index for c in candidates] == [0, 1]
    texts = [c.content.parts[0].text for c in candidates]  # type: ignore[union-attr,index]
    assert texts == [TEXT, f"{TEXT} (candidate 2)"]


class City(BaseModel):
    name: str
    population: int


def test_json_output_follows_the_response_schema(fake: FakeGemini, client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=City
    )
    response = client.models.generate_content(model=MODEL, contents="a city", config=config)
    assert orjson.loads(response.text or "") == {"name": "example", "population": 1}
    assert response.parsed == City(name="example", population=1)
    sent = fake.recorder.last.json["generationConfig"]
    assert sent["responseMimeType"] == "application/json"
    assert sent["responseSchema"]["type"] == "OBJECT"


def test_usage_metadata_reports_cached_and_thought_tokens(
    fake: FakeGemini, client: genai.Client
) -> None:
    fake.behaviour.cached_tokens = 3
    fake.behaviour.thoughts_tokens = 7
    response = client.models.generate_content(model=MODEL, contents="one two")
    usage = response.usage_metadata
    assert usage is not None
    assert usage.cached_content_token_count == 3
    assert usage.prompt_token_count == 2 + 3  # cached tokens are part of the prompt
    assert usage.thoughts_token_count == 7
    assert usage.candidates_token_count == 4
    assert usage.total_token_count == 5 + 4 + 7


def test_include_thoughts_adds_a_thought_part(client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=128)
    )
    response = client.models.generate_content(model=MODEL, contents="hi", config=config)
    parts = response.candidates[0].content.parts  # type: ignore[index,union-attr]
    assert parts is not None
    assert parts[0].thought is True
    assert parts[1].text == TEXT
    assert response.text == TEXT  # the SDK leaves thoughts out of .text
    assert response.usage_metadata is not None
    assert response.usage_metadata.thoughts_token_count == 3  # "Thinking it over."


def test_prompt_block_has_no_candidates(fake: FakeGemini, client: genai.Client) -> None:
    fake.behaviour.block_reason = "SAFETY"
    response = client.models.generate_content(model=MODEL, contents="hi")
    assert not response.candidates
    assert response.prompt_feedback is not None
    assert response.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    assert response.text is None


def test_forced_finish_reason_has_no_content(fake: FakeGemini, client: genai.Client) -> None:
    fake.behaviour.finish_reason = "RECITATION"
    response = client.models.generate_content(model=MODEL, contents="hi")
    candidate = response.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == types.FinishReason.RECITATION
    assert candidate.content is None


# --- function calling -----------------------------------------------------------------------


def test_function_call_round_trip(fake: FakeGemini, client: genai.Client) -> None:
    config = no_auto_calls(tools=[types.Tool(function_declarations=[WEATHER])])
    first = client.models.generate_content(model=MODEL, contents="weather in Paris?", config=config)
    assert first.candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    calls = first.function_calls or []
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "example", "days": 3})]
    model_turn = first.candidates[0].content  # type: ignore[index]
    assert model_turn is not None
    answer = types.Part.from_function_response(name="get_weather", response={"forecast": "hail-7"})
    history = [
        types.Content(role="user", parts=[types.Part(text="weather in Paris?")]),
        model_turn,
        types.Content(role="user", parts=[answer]),
    ]
    second = client.models.generate_content(model=MODEL, contents=history, config=config)
    assert "hail-7" in (second.text or "")
    assert not second.function_calls
    sent = fake.recorder.last.json["contents"]
    assert sent[1]["parts"][0]["functionCall"]["name"] == "get_weather"
    assert sent[2]["parts"][0]["functionResponse"]["response"] == {"forecast": "hail-7"}


def test_calling_modes_none_and_any_with_allowed_names(client: genai.Client) -> None:
    tools = [types.Tool(function_declarations=[WEATHER, TIME])]

    def calling(mode: str, allowed: list[str] | None = None) -> types.GenerateContentResponse:
        fc = types.FunctionCallingConfig(mode=mode, allowed_function_names=allowed)  # type: ignore[arg-type]
        config = no_auto_calls(
            tools=tools, tool_config=types.ToolConfig(function_calling_config=fc)
        )
        return client.models.generate_content(model=MODEL, contents="now?", config=config)

    assert calling("NONE").text == TEXT
    chosen = calling("ANY", ["get_time"]).function_calls or []
    assert [(c.name, c.args) for c in chosen] == [("get_time", {"zone": "UTC"})]


def test_parallel_calls_need_as_many_responses(fake: FakeGemini, client: genai.Client) -> None:
    fake.behaviour.parallel_calls = True
    fake.behaviour.function_call_ids = True
    config = no_auto_calls(tools=[types.Tool(function_declarations=[WEATHER, TIME])])
    first = client.models.generate_content(model=MODEL, contents="both", config=config)
    calls = first.function_calls or []
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert all(c.id for c in calls)
    model_turn = first.candidates[0].content  # type: ignore[index]
    assert model_turn is not None
    one_answer = types.Part.from_function_response(name="get_weather", response={"ok": True})
    history = [types.Content(role="user", parts=[types.Part(text="both")]), model_turn]
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(
            model=MODEL,
            contents=[*history, types.Content(role="user", parts=[one_answer])],
            config=config,
        )
    assert caught.value.code == 400
    assert "number of function response parts" in (caught.value.message or "")
    both = [one_answer, types.Part.from_function_response(name="get_time", response={"t": "9"})]
    final = client.models.generate_content(
        model=MODEL, contents=[*history, types.Content(role="user", parts=both)], config=config
    )
    assert '{"ok":true}' in (final.text or "")
    assert '{"t":"9"}' in (final.text or "")


def test_gemini_3_requires_thought_signatures_back(fake: FakeGemini, client: genai.Client) -> None:
    config = no_auto_calls(tools=[types.Tool(function_declarations=[WEATHER])])
    first = client.models.generate_content(model=GEMINI_3, contents="weather?", config=config)
    model_turn = first.candidates[0].content  # type: ignore[index]
    assert model_turn is not None and model_turn.parts
    assert model_turn.parts[0].thought_signature  # the SDK decoded the base64 bytes
    answer = types.Part.from_function_response(name="get_weather", response={"t": "rain-3"})
    question = types.Content(role="user", parts=[types.Part(text="weather?")])
    reply = types.Content(role="user", parts=[answer])
    echoed = client.models.generate_content(
        model=GEMINI_3, contents=[question, model_turn, reply], config=config
    )
    assert "rain-3" in (echoed.text or "")
    stripped = types.Content(
        role="model", parts=[types.Part(function_call=model_turn.parts[0].function_call)]
    )
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(
            model=GEMINI_3, contents=[question, stripped, reply], config=config
        )
    assert caught.value.code == 400
    assert "missing a thought_signature" in (caught.value.message or "")
    assert "position 2" in (caught.value.message or "")
    # The documented bypass value passes; a signature the service never issued does not.
    for signature, status in (("skip_thought_signature_validator", 200), ("AAAA", 400)):
        call = {"functionCall": {"name": "get_weather", "args": {}}, "thoughtSignature": signature}
        result = {"functionResponse": {"name": "get_weather", "response": {}}}
        history = [user("weather?"), {"role": "model", "parts": [call]}]
        body = {"contents": [*history, {"role": "user", "parts": [result]}]}
        assert raw_post(fake, body, model=GEMINI_3).status_code == status, signature


def test_function_turn_order_is_enforced(fake: FakeGemini) -> None:
    call = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}
    result = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}
    response = raw_post(fake, {"contents": [call, result]})
    assert response.status_code == 400
    assert error_of(response)["message"] == (
        "Please ensure that function call turn comes immediately after a user turn or after a"
        " function response turn."
    )
    response = raw_post(fake, {"contents": [user("hi"), result]})
    assert response.status_code == 400
    assert (
        "function response turn comes immediately after a function call turn"
        in (error_of(response)["message"])
    )


def test_function_response_must_be_an_object(fake: FakeGemini) -> None:
    call = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}
    result = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": "sunny"}}]}
    response = raw_post(fake, {"contents": [user("hi"), call, result]})
    assert response.status_code == 400
    assert error_of(response)["message"] == (
        "Invalid value at 'contents[2].parts[0].function_response.response'"
        ' (type.googleapis.com/google.protobuf.Struct), "sunny"'
    )


# --- streaming ------------------------------------------------------------------------------


def test_stream_text_matches_the_whole_answer(fake: FakeGemini, client: genai.Client) -> None:
    whole = client.models.generate_content(model=MODEL, contents="two words")
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="two words"))
    assert len(chunks) == fake.behaviour.stream_events
    assert "".join(c.text or "" for c in chunks) == whole.text
    assert [c.candidates[0].finish_reason for c in chunks[:-1]] == [None, None]  # type: ignore[index]
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    assert last.usage_metadata is not None and whole.usage_metadata is not None
    assert last.usage_metadata.candidates_token_count == whole.usage_metadata.candidates_token_count
    assert last.usage_metadata.total_token_count == whole.usage_metadata.total_token_count
    assert fake.recorder.last.path.endswith(":streamGenerateContent")
    assert fake.recorder.last.query == "alt=sse"


def test_stream_wire_format_is_crlf_separated_sse(fake: FakeGemini) -> None:
    response = raw_post(
        fake, {"contents": [user("hi")]}, method="streamGenerateContent", params={"alt": "sse"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.content.split(b"\r\n\r\n")
    assert events[-1] == b""  # every event, the last included, ends with CRLF CRLF
    payloads = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert all(e.startswith(b"data: {") for e in events[:-1])
    assert "".join(p["candidates"][0]["content"]["parts"][0]["text"] for p in payloads) == TEXT
    assert "candidatesTokenCount" in payloads[-1]["usageMetadata"]
    assert "candidatesTokenCount" not in payloads[0]["usageMetadata"]
    assert len({p["responseId"] for p in payloads}) == 1


def test_stream_without_alt_sse_is_one_json_array(fake: FakeGemini) -> None:
    response = raw_post(fake, {"contents": [user("hi")]}, method="streamGenerateContent")
    assert response.status_code == 200
    chunks = response.json()
    assert isinstance(chunks, list) and len(chunks) == fake.behaviour.stream_events
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_stream_function_call_arrives_whole(client: genai.Client) -> None:
    config = no_auto_calls(tools=[types.Tool(function_declarations=[WEATHER])])
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="w", config=config))
    with_calls = [c for c in chunks if c.function_calls]
    assert len(with_calls) == 1
    call = (with_calls[0].function_calls or [])[0]
    assert (call.name, call.args) == ("get_weather", {"city": "example", "days": 3})
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]


def test_stream_error_drops_the_connection_mid_stream(
    fake: FakeGemini, client: genai.Client
) -> None:
    fake.behaviour.mode = "stream_error"
    fake.behaviour.stream_events = 4
    received: list[str] = []
    with pytest.raises(TRANSPORT_ERRORS) as caught:
        for chunk in client.models.generate_content_stream(model=MODEL, contents="hi"):
            received.append(chunk.text or "")
    assert type(caught.value).__name__ == "RemoteProtocolError"  # cut, not timed out
    assert received  # the stream had started
    assert "".join(received) != TEXT
    seen = fake.recorder.last
    assert not seen.completed
    assert not seen.client_gone  # the fake hung up, not the client


def test_stream_error_truncates_a_whole_answer(fake: FakeGemini, client: genai.Client) -> None:
    fake.behaviour.mode = "stream_error"
    with pytest.raises(TRANSPORT_ERRORS) as caught:
        client.models.generate_content(model=MODEL, contents="hi")
    assert type(caught.value).__name__ == "RemoteProtocolError"


# --- errors ---------------------------------------------------------------------------------


def test_wrong_api_key_is_api_key_invalid(fake: FakeGemini) -> None:
    wrong = make_client(fake, key="not-the-key")  # keep it referenced: it closes when collected
    with pytest.raises(errors.ClientError) as caught:
        wrong.models.generate_content(model=MODEL, contents="hi")
    error = caught.value
    assert (error.code, error.status) == (400, "INVALID_ARGUMENT")
    assert error.message == "API key not valid. Please pass a valid API key."
    reasons = [d.get("reason") for d in error.details["error"]["details"]]
    assert "API_KEY_INVALID" in reasons
    assert fake.recorder.last.headers["x-goog-api-key"] == "not-the-key"  # recorded anyway


def test_missing_api_key_is_permission_denied(fake: FakeGemini) -> None:
    response = raw_post(fake, {"contents": [user("hi")]}, key=None)
    assert response.status_code == 403
    assert error_of(response)["status"] == "PERMISSION_DENIED"


def test_api_key_in_the_url_is_refused(fake: FakeGemini) -> None:
    for header_key in (None, ""):  # alone, and even next to a correct header
        response = raw_post(
            fake, {"contents": [user("hi")]}, key=header_key, params={"key": fake.api_key}
        )
        assert response.status_code == 400
        error = error_of(response)
        assert error["status"] == "INVALID_ARGUMENT"
        assert "x-goog-api-key" in error["message"]
        assert fake.api_key not in response.text


def test_unknown_field_is_rejected_like_the_proto_parser(fake: FakeGemini) -> None:
    body = {"contents": [user("hi")], "generationConfig": {"foo": 1, "maxOutputTokens": 5}}
    response = raw_post(fake, body)
    assert response.status_code == 400
    error = error_of(response)
    message = (
        "Invalid JSON payload received. Unknown name \"foo\" at 'generation_config':"
        " Cannot find field."
    )
    assert error["message"] == message
    violation = {"field": "generation_config", "description": message}
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}
    ]
    top = raw_post(fake, {"contents": [user("hi")], "messages": []})
    assert error_of(top)["message"] == (
        'Invalid JSON payload received. Unknown name "messages": Cannot find field.'
    )
    assert error_of(top)["details"][0]["fieldViolations"] == [
        {"description": error_of(top)["message"]}
    ]


def test_unknown_field_through_the_sdk_is_a_client_error(fake: FakeGemini) -> None:
    client = make_client(fake, extra_body={"generationConfig": {"reasoningEffort": "high"}})
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents="hi")
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert 'Unknown name "reasoningEffort"' in (caught.value.message or "")


def test_snake_case_names_work_like_camel_case(fake: FakeGemini) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "system_instruction": {"parts": [{"text": "be brief"}]},
        "generation_config": {"max_output_tokens": 1, "stop_sequences": ["zzz"]},
    }
    response = raw_post(fake, body)
    assert response.status_code == 200, response.text
    candidate = response.json()["candidates"][0]
    assert candidate["content"]["parts"] == [{"text": "Hello"}]
    assert candidate["finishReason"] == "MAX_TOKENS"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("additionalProperties", False),
        ("$schema", "https://json-schema.org/draft/2020-12/schema"),
        ("$defs", {}),
        ("$ref", "#/$defs/x"),
        ("const", "x"),
        ("oneOf", [{"type": "string"}]),
        ("allOf", [{"type": "string"}]),
        ("exclusiveMinimum", 0),
    ],
)
def test_json_schema_only_keys_are_unknown_in_parameters(
    fake: FakeGemini, key: str, value: Any
) -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, key: value}
    response = raw_post(fake, tool_body(parameters))
    assert response.status_code == 400
    assert error_of(response)["message"] == (
        f'Invalid JSON payload received. Unknown name "{key}" at'
        " 'tools[0].function_declarations[0].parameters': Cannot find field."
    )


def test_nested_schema_errors_name_the_map_entry(fake: FakeGemini) -> None:
    parameters = {
        "type": "OBJECT",
        "properties": {
            "city": {"type": "STRING"},
            "tags": {"type": "ARRAY", "items": {"type": "STRING", "const": "a"}},
        },
    }
    response = raw_post(fake, tool_body(parameters))
    assert error_of(response)["message"] == (
        'Invalid JSON payload received. Unknown name "const" at'
        " 'tools[0].function_declarations[0].parameters.properties[1].value.items':"
        " Cannot find field."
    )


def test_schema_types_accept_either_case_and_reject_others(fake: FakeGemini) -> None:
    lower = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response = raw_post(fake, tool_body(lower))
    assert response.status_code == 200, response.text
    part = response.json()["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "get_weather", "args": {"city": "example"}}}
    wrong = {"type": "dict", "properties": {"city": {"type": "string"}}}
    response = raw_post(fake, tool_body(wrong))
    assert error_of(response)["message"] == (
        "Invalid value at 'tools[0].function_declarations[0].parameters.type'"
        f' ({TYPE_ENUM}), "dict"'
    )


def test_parameters_json_schema_takes_full_json_schema(fake: FakeGemini) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"$ref": "#/$defs/City"}},
        "required": ["city"],
        "additionalProperties": False,
        "$defs": {"City": {"type": "string", "enum": ["Oslo"]}},
    }
    declaration = {"name": "get_weather", "parametersJsonSchema": schema}
    body = {"contents": [user("w")], "tools": [{"functionDeclarations": [declaration]}]}
    response = raw_post(fake, body)
    assert response.status_code == 200, response.text
    call = response.json()["candidates"][0]["content"]["parts"][0]["functionCall"]
    assert call["args"] == {"city": "Oslo"}


def test_schema_semantics_are_checked(fake: FakeGemini) -> None:
    parameters = {
        "type": "OBJECT",
        "properties": {"tags": {"type": "ARRAY"}, "n": {"type": "INTEGER", "enum": ["1"]}},
        "required": ["tags", "missing"],
    }
    response = raw_post(fake, tool_body(parameters))
    assert response.status_code == 400
    path = "* GenerateContentRequest.tools[0].function_declarations[0].parameters"
    assert error_of(response)["message"] == (
        f"{path}.required[1]: property is not defined\n"
        f"{path}.properties[tags].items: missing field.\n"
        f"{path}.properties[n].enum: only allowed for STRING type\n"
    )


def test_invalid_function_name_is_rejected(fake: FakeGemini) -> None:
    body = tool_body({"type": "OBJECT", "properties": {"x": {"type": "STRING"}}})
    body["tools"][0]["functionDeclarations"][0]["name"] = "get weather"
    response = raw_post(fake, body)
    assert response.status_code == 400
    assert "name: Invalid function name." in error_of(response)["message"]


def test_bad_role_is_rejected(client: genai.Client) -> None:
    contents = [
        types.Content(role="user", parts=[types.Part(text="hi")]),
        types.Content(role="assistant", parts=[types.Part(text="hello")]),
    ]
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents=contents)
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert caught.value.message == "Please use a valid role: user, model."


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"temperature": 2.5}, "generation_config.temperature: must be in the range"),
        ({"stopSequences": list("abcdef")}, "generation_config.stop_sequences:"),
        ({"responseMimeType": "text/html"}, "generation_config.response_mime_type:"),
        (
            {"responseSchema": {"type": "STRING"}},
            "generation_config.response_schema: response_mime_type must be",
        ),
    ],
)
def test_generation_config_limits(fake: FakeGemini, config: dict[str, Any], expected: str) -> None:
    response = raw_post(fake, {"contents": [user("hi")], "generationConfig": config})
    assert response.status_code == 400
    assert expected in error_of(response)["message"]


def test_wrong_value_types_are_invalid_values(fake: FakeGemini) -> None:
    body = {"contents": [user("hi")], "generationConfig": {"temperature": "hot", "topK": 1.5}}
    response = raw_post(fake, body)
    assert error_of(response)["message"] == (
        "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"\n"
        "Invalid value at 'generation_config.top_k' (TYPE_INT32), 1.5"
    )


def test_empty_or_malformed_requests(fake: FakeGemini) -> None:
    assert error_of(raw_post(fake, {}))["message"] == (
        "* GenerateContentRequest.contents: contents is not specified\n"
    )
    empty_part = raw_post(fake, {"contents": [{"role": "user", "parts": [{"text": ""}]}]})
    assert (
        "contents[0].parts[0].data: required oneof field 'data'"
        in (error_of(empty_part)["message"])
    )
    assert raw_post(fake, b"{not json").status_code == 400
    assert "Root element must be a message" in error_of(raw_post(fake, [1]))["message"]


def test_unknown_model_is_not_found(fake: FakeGemini, client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-0-nano", contents="hi")
    assert (caught.value.code, caught.value.status) == (404, "NOT_FOUND")
    assert "models/gemini-0-nano is not found for API version v1beta" in (
        caught.value.message or ""
    )
    fake.behaviour.models = None  # any name is served then
    assert client.models.generate_content(model="gemini-0-nano", contents="hi").text == TEXT


def test_only_v1beta_is_served_unless_asked(fake: FakeGemini) -> None:
    stable = genai.Client(
        api_key=fake.api_key,
        http_options=types.HttpOptions(
            base_url=fake.root_url,
            api_version="v1",
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
    with pytest.raises(errors.ClientError) as caught:
        stable.models.generate_content(model=MODEL, contents="hi")
    assert caught.value.code == 404
    assert fake.recorder.last.path == f"/v1/models/{MODEL}:generateContent"
    fake.behaviour.api_versions = ("v1beta", "v1")
    assert stable.models.generate_content(model=MODEL, contents="hi").text == TEXT


def test_unknown_route_is_googles_html_404(fake: FakeGemini) -> None:
    response = httpx.post(f"{fake.root_url}/v1beta/chat/completions", json={}, timeout=10)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


def test_failure_modes_map_to_sdk_errors(fake: FakeGemini, client: genai.Client) -> None:
    expected: dict[str, tuple[type[errors.APIError], int, str]] = {
        "rate_limited": (errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        "server_error": (errors.ServerError, 500, "INTERNAL"),
        "unavailable": (errors.ServerError, 503, "UNAVAILABLE"),
        "invalid_argument": (errors.ClientError, 400, "INVALID_ARGUMENT"),
    }
    fake.behaviour.error_message = "Deliberately invalid."
    for mode, (kind, code, status) in expected.items():
        fake.behaviour.mode = mode
        with pytest.raises(kind) as caught:
            client.models.generate_content(model=MODEL, contents="hi")
        assert (caught.value.code, caught.value.status) == (code, status), mode
    assert caught.value.message == "Deliberately invalid."
    fake.behaviour.mode = "rate_limited"
    fake.behaviour.retry_delay = "7s"
    details = error_of(raw_post(fake, {"contents": [user("hi")]}))["details"]
    retry = [d for d in details if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]


def test_hang_times_out_and_records_the_client_leaving(fake: FakeGemini) -> None:
    fake.behaviour.mode = "hang"
    impatient = make_client(fake, timeout=300)  # milliseconds
    with pytest.raises(TRANSPORT_ERRORS) as caught:
        impatient.models.generate_content(model=MODEL, contents="hi")
    assert type(caught.value).__name__ == "ReadTimeout"
    seen = fake.recorder.last
    assert wait_for(lambda: seen.client_gone)
    assert not seen.completed


def test_unknown_mode_is_not_mistaken_for_ok(fake: FakeGemini, client: genai.Client) -> None:
    fake.behaviour.mode = "rate-limited"  # sic
    with pytest.raises(errors.ServerError) as caught:
        client.models.generate_content(model=MODEL, contents="hi")
    assert "unknown Behaviour.mode" in (caught.value.message or "")


def test_default_models_are_served(client: genai.Client) -> None:
    for model in DEFAULT_MODELS:
        assert client.models.generate_content(model=model, contents="hi").text == TEXT
