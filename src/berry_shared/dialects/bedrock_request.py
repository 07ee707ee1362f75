"""OpenAI chat bodies as Amazon Bedrock Converse requests: pure functions, body in, body out.

Converse is strict: it rejects unknown members, blank text, conversations that do not start
with a user turn or do not alternate, tool results without the tool use they answer, and
tool blocks without a ``toolConfig``. So the translation hoists system and developer messages
into ``system``, merges consecutive turns of one role (tool results become the user turn that
follows the assistant's tool calls), drops blank text, and keeps only what Converse knows.
What Bedrock cannot do at all (an image behind an https URL, ``n > 1``) raises
``Unsupported``, so the relay can pick another backend.

Shapes: Bedrock Runtime API reference (Converse, Message, ContentBlock, ToolConfiguration,
InferenceConfiguration) and botocore's ``bedrock-runtime`` service model.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .base import Unsupported, json_object, tool_arguments

# Converse's inferenceConfig.temperature is 0..1 where OpenAI's is 0..2: values above 1 are
# clamped (the model's most random), never rejected.
MAX_TEMPERATURE = 1.0
IMAGE_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "gif": "gif", "webp": "webp"}
# ToolUseBlock.toolUseId: 1-64 of these characters (botocore's model); other ids are mapped.
_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

Blocks = list[dict[str, Any]]


def converse_body(body: dict[str, Any]) -> dict[str, Any]:
    """The Converse request (``modelId`` travels in the path) for an OpenAI chat ``body``."""
    n = body.get("n")
    if n is not None and n != 1:
        raise Unsupported("Amazon Bedrock returns one choice per request: 'n' must be 1.", "n")
    system, messages, used_tools = converse_messages(body["messages"])
    request: dict[str, Any] = {"messages": messages}
    if system:
        request["system"] = system
    inference = inference_config(body)
    if inference:
        request["inferenceConfig"] = inference
    tools = tool_config(body.get("tools"), body.get("tool_choice"), used_tools)
    if tools is not None:
        request["toolConfig"] = tools
    return request


# -- messages ----------------------------------------------------------------------------------


def converse_messages(
    messages: list[dict[str, Any]],
) -> tuple[Blocks, list[dict[str, Any]], dict[str, None]]:
    """(system blocks, alternating user/assistant turns, tool names the history uses)."""
    system: Blocks = []
    turns: list[dict[str, Any]] = []
    used_tools: dict[str, None] = {}  # ordered set
    for index, message in enumerate(messages):
        role = message["role"]
        content = message.get("content")
        if role == "system" or role == "developer":
            system.extend(_text_blocks(content, index))
            continue
        if role == "user":
            turn_role, blocks = "user", _user_blocks(content, index)
        elif role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(message, index, used_tools)
        elif role == "tool":
            turn_role, blocks = "user", [_tool_result(message)]
        else:
            raise Unsupported(
                f"Amazon Bedrock backends do not take '{role[:40]}' messages.",
                f"messages[{index}].role",
            )
        if not blocks:
            continue  # blank: Converse rejects empty content
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    if not turns or turns[0]["role"] != "user":
        raise Unsupported(
            "Amazon Bedrock needs a conversation that starts with a user message "
            "(after any system messages).",
            "messages",
        )
    return system, turns, used_tools


def _text_blocks(content: Any, index: int) -> Blocks:
    """Text-only content (system, developer and assistant text); blank text is left out."""
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise Unsupported("Message content must be a string or a list of parts.", _at(index))
    blocks: Blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        # An assistant's refusal part is its text as far as the next turn is concerned.
        text = part.get(kind) if kind == "text" or kind == "refusal" else None
        if not isinstance(text, str):
            raise Unsupported(
                f"Amazon Bedrock backends take only text in this message, not {kind!r} parts.",
                _at(index),
            )
        if text.strip():
            blocks.append({"text": text})
    return blocks


def _user_blocks(content: Any, index: int) -> Blocks:
    if not isinstance(content, list):
        return _text_blocks(content, index)
    blocks: Blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"].strip():
                blocks.append({"text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), index))
        else:
            raise Unsupported(
                f"Amazon Bedrock backends take text and image parts, not {kind!r} parts.",
                _at(index),
            )
    return blocks


def _image_block(image: Any, index: int) -> dict[str, Any]:
    """A data URL as an image block: its base64 travels as is (Converse's JSON carries blobs
    as base64), so the image is never decoded here. ``s3://`` URIs are Bedrock's own way to
    point at an image; Bedrock cannot fetch http(s) URLs, and Berry does not fetch them for it
    (a gateway that fetches URLs its callers name is a server-side request forgery tool)."""
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise Unsupported("An image_url part needs a 'url'.", _at(index))
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        kind, _, subtype = media_type.partition("/")
        image_format = IMAGE_FORMATS.get(subtype.lower()) if kind.lower() == "image" else None
        if comma and encoding.lower() == "base64" and image_format and data:
            return {"image": {"format": image_format, "source": {"bytes": data}}}
        raise Unsupported(
            "Amazon Bedrock takes images as base64 data URLs of png, jpeg, gif or webp.",
            _at(index),
        )
    if url.startswith("s3://"):
        image_format = IMAGE_FORMATS.get(url.rpartition(".")[2].lower())
        if image_format:
            return {"image": {"format": image_format, "source": {"s3Location": {"uri": url}}}}
    raise Unsupported(
        "Amazon Bedrock cannot fetch images from URLs: send the image as a base64 data URL "
        "(or an s3:// URI).",
        _at(index),
    )


def _assistant_blocks(message: dict[str, Any], index: int, used_tools: dict[str, None]) -> Blocks:
    blocks = _text_blocks(message.get("content"), index)
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        name = function.get("name")
        if call.get("type", "function") != "function" or not isinstance(name, str):
            raise Unsupported("Amazon Bedrock backends take only function tool calls.", _at(index))
        used_tools[name] = None
        tool_use = {
            "toolUseId": tool_use_id(call.get("id")),
            "name": name,
            "input": tool_arguments(function.get("arguments")),
        }
        blocks.append({"toolUse": tool_use})
    return blocks


def tool_use_id(call_id: Any) -> str:
    """The client's tool call id, or a stable stand-in where Converse's pattern refuses it
    (the same id maps the same way in the call and in its result)."""
    text = call_id if isinstance(call_id, str) else str(call_id)
    if _TOOL_USE_ID.fullmatch(text):
        return text
    return "call_" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    """A tool message as a toolResult: a JSON object result as ``json``, anything else as text
    (blank results as no content at all: Converse rejects blank text)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    text = content if isinstance(content, str) else "" if content is None else str(content)
    items: Blocks = []
    stripped = text.strip()
    if stripped.startswith("{") and (parsed := json_object(stripped)) is not None:
        items.append({"json": parsed})
    if not items and stripped:
        items.append({"text": text})
    return {"toolResult": {"toolUseId": tool_use_id(message.get("tool_call_id")), "content": items}}


def _at(index: int) -> str:
    return f"messages[{index}].content"


# -- parameters --------------------------------------------------------------------------------


def inference_config(body: dict[str, Any]) -> dict[str, Any]:
    """maxTokens, temperature, topP and stopSequences; OpenAI's other sampling parameters
    (penalties, seed, logit_bias, ...) have no Converse counterpart and are dropped."""
    config: dict[str, Any] = {}
    max_tokens = _number(body.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = _number(body.get("max_tokens"))
    if max_tokens is not None and max_tokens >= 1:
        config["maxTokens"] = int(max_tokens)
    temperature = _number(body.get("temperature"))
    if temperature is not None:
        config["temperature"] = min(max(temperature, 0.0), MAX_TEMPERATURE)
    top_p = _number(body.get("top_p"))
    if top_p is not None:
        config["topP"] = min(max(top_p, 0.0), 1.0)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    sequences = [s for s in stops if isinstance(s, str) and s]
    if sequences:
        config["stopSequences"] = sequences
    return config


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def tool_config(tools: Any, tool_choice: Any, used_tools: dict[str, None]) -> dict[str, Any] | None:
    """``tools`` as toolSpecs and ``tool_choice`` auto / required / named as auto / any / tool.

    Converse has no "none": tools are then left out, unless the history holds tool calls, for
    which Converse requires a toolConfig (the tools are sent, with no choice forced). A
    history with tool calls but no ``tools`` gets stand-in specs for the tools it names.
    """
    specs = [_tool_spec(tool) for tool in tools] if isinstance(tools, list) else []
    if tool_choice == "none":
        if not used_tools:
            return None
        tool_choice = None
    declared = {spec["toolSpec"]["name"] for spec in specs}
    specs.extend(
        {"toolSpec": {"name": name, "inputSchema": {"json": _EMPTY_SCHEMA}}}
        for name in used_tools
        if name not in declared
    )
    if not specs:
        return None
    config: dict[str, Any] = {"tools": specs}
    if tool_choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif tool_choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise Unsupported("tool_choice must name a function.", "tool_choice")
        config["toolChoice"] = {"tool": {"name": name}}
    return config


def _tool_spec(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type") != "function":
        raise Unsupported("Amazon Bedrock backends take only function tools.", "tools")
    parameters = function.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        schema = _EMPTY_SCHEMA
    elif "type" not in parameters:
        schema = {"type": "object", **parameters}
    else:
        schema = parameters
    spec: dict[str, Any] = {"name": function.get("name"), "inputSchema": {"json": schema}}
    description = function.get("description")
    if isinstance(description, str) and description.strip():
        spec["description"] = description
    return {"toolSpec": spec}
