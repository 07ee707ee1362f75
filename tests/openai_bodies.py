"""Hypothesis strategies: valid OpenAI chat completion bodies, as real clients send them.

Used to prove that every dialect translates any such body into a request that the strict
provider fakes accept. The bodies stay inside what every backend type can honour (one choice,
``n`` absent or 1), and they cover text, system and developer messages, content parts with
images (data and https URLs), tool definitions with JSON-Schema keywords providers disagree
on, assistant tool calls answered by tool messages, sampling parameters, stop sequences,
``max_tokens`` / ``max_completion_tokens``, ``tool_choice``, ``response_format`` and streams.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from hypothesis import strategies as st

# A 1x1 PNG: image parts carry real image bytes.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(PNG_1X1).decode()

# Printable text without surrogates; never empty or only whitespace (providers reject those).
_WORDS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40
).filter(lambda t: t.strip())
TEXT = st.lists(_WORDS, min_size=1, max_size=4).map(" ".join)
TOOL_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)

_PROPERTY = st.sampled_from(
    [
        {"type": "string", "description": "a city"},
        {"type": "string", "enum": ["celsius", "fahrenheit"]},
        {"type": "integer", "minimum": 0, "maximum": 10},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "array", "items": {"type": "string"}},
        {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]},
        # JSON Schema keywords some providers do not accept: a dialect must reduce them.
        {"type": "string", "format": "date-time", "default": "now"},
        {"type": ["string", "null"]},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        {"type": "object", "additionalProperties": {"type": "string"}},
    ]
)


@st.composite
def tool(draw: st.DrawFn, name: str) -> dict[str, Any]:
    names = draw(st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), max_size=3, unique=True))
    properties = {n: draw(_PROPERTY) for n in names}
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if names and draw(st.booleans()):
        parameters["required"] = names[:1]
    if draw(st.booleans()):
        parameters["additionalProperties"] = False
    if draw(st.booleans()):
        parameters["$schema"] = "http://json-schema.org/draft-07/schema#"
    function: dict[str, Any] = {"name": name, "parameters": parameters}
    if draw(st.booleans()):
        function["description"] = draw(TEXT)
    if draw(st.booleans()):
        function["strict"] = False
    return {"type": "function", "function": function}


@st.composite
def user_content(draw: st.DrawFn) -> str | list[dict[str, Any]]:
    if draw(st.booleans()):
        return draw(TEXT)
    parts: list[dict[str, Any]] = [{"type": "text", "text": draw(TEXT)}]
    for _ in range(draw(st.integers(0, 2))):
        url = draw(st.sampled_from([PNG_DATA_URL, "https://example.com/cat.png"]))
        image: dict[str, Any] = {"url": url}
        if draw(st.booleans()):
            image["detail"] = draw(st.sampled_from(["auto", "low", "high"]))
        parts.append({"type": "image_url", "image_url": image})
    return draw(st.permutations(parts))


@st.composite
def conversation(draw: st.DrawFn, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System/developer prefix, then user and assistant turns; tool calls are answered."""
    messages: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        role = draw(st.sampled_from(["system", "developer"]))
        messages.append({"role": role, "content": draw(TEXT)})
    call_number = 0
    for turn in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(user_content())})
        last = turn == 0 or draw(st.booleans())
        if last and turn > 0:
            break
        if tools and draw(st.booleans()):
            calls = []
            for _ in range(draw(st.integers(1, 2))):
                call_number += 1
                function = draw(st.sampled_from(tools))["function"]
                arguments = draw(
                    st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), TEXT, max_size=2)
                )
                calls.append(
                    {
                        "id": f"call_{call_number}",
                        "type": "function",
                        "function": {
                            "name": function["name"],
                            "arguments": orjson.dumps(arguments).decode(),
                        },
                    }
                )
            assistant: dict[str, Any] = {"role": "assistant", "tool_calls": calls}
            assistant["content"] = draw(st.one_of(st.none(), TEXT))
            messages.append(assistant)
            for call in calls:
                result = draw(st.one_of(TEXT, st.just('{"temperature": 21, "unit": "celsius"}')))
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
            if draw(st.booleans()):
                return messages  # the model's turn next: it answers the tool results
        else:
            messages.append({"role": "assistant", "content": draw(TEXT)})
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": draw(TEXT)})
    return messages


@st.composite
def chat_bodies(draw: st.DrawFn, model: str = "test-model") -> dict[str, Any]:
    """A valid OpenAI chat completion request body."""
    names = draw(st.lists(TOOL_NAME, max_size=3, unique=True))
    tools = [draw(tool(name)) for name in names]
    body: dict[str, Any] = {"model": model, "messages": draw(conversation(tools))}
    if tools and draw(st.booleans()):
        body["tools"] = tools
        choice = draw(st.sampled_from(["auto", "none", "required", "named", None]))
        if choice == "named":
            body["tool_choice"] = {
                "type": "function",
                "function": {"name": draw(st.sampled_from(names))},
            }
        elif choice is not None:
            body["tool_choice"] = choice
        if draw(st.booleans()):
            body["parallel_tool_calls"] = draw(st.booleans())
    elif any(m.get("tool_calls") for m in body["messages"]):
        body["tools"] = tools  # a conversation with tool calls declares its tools
    optional: dict[str, st.SearchStrategy[Any]] = {
        "temperature": st.floats(0, 2, allow_nan=False).map(lambda x: round(x, 2)),
        "top_p": st.floats(0.01, 1, allow_nan=False).map(lambda x: round(x, 2)),
        "max_tokens": st.integers(1, 4096),
        "max_completion_tokens": st.integers(1, 4096),
        "stop": st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=4)),
        "user": st.from_regex(r"user-[a-z0-9]{1,12}", fullmatch=True),
        "seed": st.integers(0, 2**31 - 1),
        "frequency_penalty": st.floats(-2, 2, allow_nan=False).map(lambda x: round(x, 2)),
        "presence_penalty": st.floats(-2, 2, allow_nan=False).map(lambda x: round(x, 2)),
        "logprobs": st.just(False),
        "n": st.just(1),
        "response_format": st.sampled_from(
            [
                {"type": "text"},
                {"type": "json_object"},
                {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "answer",
                        "schema": {
                            "type": "object",
                            "properties": {"answer": {"type": "string"}},
                            "required": ["answer"],
                            "additionalProperties": False,
                        },
                        "strict": True,
                    },
                },
            ]
        ),
    }
    for key, strategy in optional.items():
        if draw(st.integers(0, 3)) == 0:
            body[key] = draw(strategy)
    if "max_tokens" in body and "max_completion_tokens" in body:
        del body["max_tokens"]  # OpenAI rejects both together
    if draw(st.booleans()):
        body["stream"] = True
        if draw(st.booleans()):
            body["stream_options"] = {"include_usage": draw(st.booleans())}
    return body
