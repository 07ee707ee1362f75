"""An OpenAI chat completions body as a Gemini ``GenerateContentRequest`` (camelCase JSON).

Pure functions, body in and body out. What does not translate one to one, and why:

* System and developer messages, wherever they stand, become ``systemInstruction`` (Gemini
  has one); a conversation of system messages only is sent as the user's turn.
* Consecutive messages of one Gemini role share a content; tool results form their own user
  content (one ``functionResponse`` per call of the model turn before it).
* ``functionResponse`` needs the function's name, which OpenAI's tool message does not carry:
  it comes from the earlier assistant ``tool_call`` with the same id. A result that is not a
  JSON object is wrapped as ``{"result": "<the content as sent>"}``.
* Gemini 3 refuses function calls of the current turn without the thought signature it
  issued, and OpenAI clients never send signatures back. Rebuilt ``functionCall`` parts
  carry the documented bypass value instead (ai.google.dev/gemini-api/docs/thought-signatures,
  FAQ "history from another model"); Gemini 1.x and 2.x models do not validate signatures
  and get none.
* Call ids are not sent: Gemini pairs calls and responses by turn, order and name.
* Dropped: ``frequency_penalty`` / ``presence_penalty`` (Gemini 2.5 and later answer 400
  "Penalty is not enabled" for any non-zero value), ``logprobs`` (answers carry
  ``logprobs: null``), ``user``, ``parallel_tool_calls``, ``store``, ``metadata``,
  ``service_tier``, ``stream_options`` and ``reasoning_effort``.
* Before Gemini 3, function calling and JSON output cannot be combined (400 "Function calling
  with a response mime type: 'application/json' is unsupported"): with ``tool_choice: "none"``
  the tools are left out, otherwise the backend is ``Unsupported`` for that request.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from .base import Unsupported, json_object, tool_arguments
from .gemini_schema import reduce_schema

# Documented in the thought-signatures guide as the value that skips signature validation.
THOUGHT_SIGNATURE_BYPASS = "skip_thought_signature_validator"
# Model ids before Gemini 3 ("models/" prefix optional), which behave differently above.
_BEFORE_GEMINI_3 = re.compile(r"(?:models/)?gemini-[12](?:[.-]|$)")
MAX_CANDIDATES = 8  # GenerationConfig.candidateCount
_INT32 = 2**31 - 1
_AUDIO_TYPES = {"mp3": "audio/mp3", "wav": "audio/wav"}

Part = dict[str, Any]


def before_gemini_3(model: str) -> bool:
    return _BEFORE_GEMINI_3.match(model) is not None


def gemini_request(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The ``generateContent`` body serving the OpenAI ``body`` on the Gemini ``model``."""
    contents, system = gemini_contents(body["messages"], sign_calls=not before_gemini_3(model))
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    config = generation_config(body)
    declarations = function_declarations(body.get("tools"))
    tool_config = function_calling_config(body.get("tool_choice"))
    if declarations and config.get("responseMimeType") and before_gemini_3(model):
        if tool_config is None or tool_config["functionCallingConfig"]["mode"] != "NONE":
            raise Unsupported(
                f"The Gemini model '{model}' cannot combine tools with response_format JSON "
                "output (Gemini 3 can).",
                param="response_format",
            )
        declarations = []
    if declarations:
        request["tools"] = [{"functionDeclarations": declarations}]
        if tool_config is not None:
            request["toolConfig"] = tool_config
    if config:
        request["generationConfig"] = config
    return request


# -- messages ---------------------------------------------------------------------------------


def gemini_contents(
    messages: list[dict[str, Any]], sign_calls: bool = True
) -> tuple[list[dict[str, Any]], list[Part]]:
    """``(contents, systemInstruction parts)`` for OpenAI ``messages``."""
    system: list[Part] = []
    contents: list[dict[str, Any]] = []
    kinds: list[str] = []  # per content: "user", "model" or "tool" (results, a user content)
    call_names: dict[str, str] = {}
    for index, message in enumerate(messages):
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), index))
            continue
        if role == "user":
            kind, parts = "user", _user_parts(message.get("content"), index)
        elif role == "assistant":
            kind, parts = "model", _assistant_parts(message, index, call_names)
        elif role in ("tool", "function"):
            kind, parts = "tool", [_tool_result(message, index, call_names)]
        else:
            raise _invalid(index, f"the role {str(role)[:40]!r} has no Gemini equivalent", "role")
        if not parts:
            continue
        if kinds and kinds[-1] == kind:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": "model" if kind == "model" else "user", "parts": parts})
            kinds.append(kind)
    if not contents:
        if not system:
            raise Unsupported("The messages have no content to send.", param="messages")
        contents, system = [{"role": "user", "parts": system}], []
    if sign_calls:
        for content in contents:
            if content["role"] == "model":
                _sign_first_call(content["parts"])
    return contents, system


def _sign_first_call(parts: list[Part]) -> None:
    for part in parts:
        if "functionCall" in part:
            part["thoughtSignature"] = THOUGHT_SIGNATURE_BYPASS
            return


def _invalid(index: int, problem: str, field: str | None = None) -> Unsupported:
    where = f"messages[{index}]" + (f".{field}" if field else "")
    return Unsupported(f"{where}: {problem}.", param=where)


def _text_parts(content: Any, index: int) -> list[Part]:
    """Text-only content (system, assistant): a string or a list of text/refusal parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid(index, "content must be a string or a list of parts", "content")
    parts: list[Part] = []
    for part in content:
        kind = part.get("type", "text") if isinstance(part, dict) else None
        text = part.get(kind) if kind in ("text", "refusal") else None
        if not isinstance(text, str):
            raise _invalid(index, "only text parts are possible in this message", "content")
        if text:
            parts.append({"text": text})
    return parts


def _user_parts(content: Any, index: int) -> list[Part]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid(index, "content must be a string or a list of parts", "content")
    parts: list[Part] = []
    for part in content:
        if not isinstance(part, dict):
            raise _invalid(index, "each content part must be an object", "content")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _invalid(index, "a text part needs a string 'text'", "content")
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise _invalid(index, "an image_url part needs a 'url'", "content")
            parts.append(media_part(url, index))
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                raise _invalid(index, "an input_audio part needs base64 'data'", "content")
            mime = _AUDIO_TYPES.get(str(audio.get("format")), "audio/wav")
            parts.append({"inlineData": {"mimeType": mime, "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            if not isinstance(data, str):
                raise _invalid(index, "Gemini backends take files as file_data only", "content")
            parts.append(media_part(data, index))
        else:
            raise _invalid(index, f"content parts of type {str(kind)[:40]!r} are not supported")
    return parts


def media_part(url: str, index: int = 0) -> Part:
    """A ``data:`` URL as ``inlineData`` (bytes in the request); any other URL as ``fileData``
    (Gemini fetches it), its type guessed from the name where that is possible."""
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        mime, _, encoding = header.partition(";")
        if not comma or encoding != "base64" or not mime:
            raise _invalid(index, "a data URL must be data:<type>;base64,<data>", "content")
        return {"inlineData": {"mimeType": mime, "data": data}}
    file: dict[str, str] = {"fileUri": url}
    guessed = mimetypes.guess_type(urlsplit(url).path)[0]
    if guessed is not None:
        file["mimeType"] = guessed
    return {"fileData": file}


def _assistant_parts(message: dict[str, Any], index: int, call_names: dict[str, str]) -> list[Part]:
    parts = _text_parts(message.get("content"), index)
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise _invalid(index, "tool_calls must be a list", "tool_calls")
    for call in calls or ():
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(name, str)
            or call.get("type", "function") != "function"
        ):
            raise _invalid(index, "each tool call needs a function with a name", "tool_calls")
        call_id = call.get("id")
        if isinstance(call_id, str):
            call_names[call_id] = name
        parts.append(
            {"functionCall": {"name": name, "args": tool_arguments(function.get("arguments"))}}
        )
    legacy = message.get("function_call")  # the pre-tools form of a single call
    if isinstance(legacy, dict) and isinstance(legacy.get("name"), str):
        parts.append(
            {
                "functionCall": {
                    "name": legacy["name"],
                    "args": tool_arguments(legacy.get("arguments")),
                }
            }
        )
    return parts


def _tool_result(message: dict[str, Any], index: int, call_names: dict[str, str]) -> Part:
    if message.get("role") == "function":
        name = message.get("name")
    else:
        call_id = message.get("tool_call_id")
        name = call_names.get(call_id) if isinstance(call_id, str) else None
    if not isinstance(name, str):
        raise _invalid(
            index, "a tool message must answer an earlier assistant tool call", "tool_call_id"
        )
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(p["text"] for p in _text_parts(content, index))
    elif isinstance(content, str):
        text = content
    else:
        text = "" if content is None else orjson.dumps(content).decode()
    response = json_object(text) if text.startswith("{") else None
    if response is None:
        response = {"result": text}
    return {"functionResponse": {"name": name, "response": response}}


# -- tools ------------------------------------------------------------------------------------


def function_declarations(tools: Any) -> list[dict[str, Any]]:
    if not tools:
        return []
    if not isinstance(tools, list):
        raise Unsupported("'tools' must be a list.", param="tools")
    declarations = []
    for position, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            kind = str(tool.get("type"))[:40] if isinstance(tool, dict) else "?"
            raise Unsupported(
                f"tools[{position}]: Gemini backends take function tools only, not {kind!r}.",
                param=f"tools[{position}]",
            )
        declaration: dict[str, Any] = {"name": function.get("name")}
        description = function.get("description")
        if description:
            declaration["description"] = description
        parameters = function.get("parameters")
        if isinstance(parameters, dict) and parameters:
            declaration["parametersJsonSchema"] = reduce_schema(parameters)
        declarations.append(declaration)
    return declarations


def function_calling_config(choice: Any) -> dict[str, Any] | None:
    """OpenAI's ``tool_choice`` as ``toolConfig``; None leaves Gemini's default (AUTO)."""
    if choice is None:
        return None
    names: list[str] = []
    if choice in ("auto", "none", "required"):
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise Unsupported("tool_choice: a function choice needs a name.", param="tool_choice")
        mode, names = "ANY", [name]
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools")
        if not isinstance(allowed, dict) or allowed.get("mode") != "required":
            return {"functionCallingConfig": {"mode": "AUTO"}}  # Gemini can only narrow ANY
        tools = allowed.get("tools")
        mode = "ANY"
        for tool in tools if isinstance(tools, list) else ():
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                names.append(function["name"])
    else:
        raise Unsupported("tool_choice has a form Gemini backends cannot honour.", "tool_choice")
    config: dict[str, Any] = {"mode": mode}
    if names:
        config["allowedFunctionNames"] = names
    return {"functionCallingConfig": config}


# -- generation config ------------------------------------------------------------------------


def generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    for openai_name, gemini_name in (("temperature", "temperature"), ("top_p", "topP")):
        value = body.get(openai_name)
        if value is not None:
            config[gemini_name] = value
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and (sequences := [s for s in stop if s]):
        config["stopSequences"] = sequences
    n = body.get("n")
    if n is not None and n != 1:
        if isinstance(n, int) and n > MAX_CANDIDATES:
            raise Unsupported(
                f"Gemini backends return at most {MAX_CANDIDATES} choices (n={n}).", param="n"
            )
        config["candidateCount"] = n
    seed = body.get("seed")
    if isinstance(seed, int) and -_INT32 - 1 <= seed <= _INT32:
        config["seed"] = seed  # Gemini's seed is an int32; a larger one is only dropped
    config.update(response_format(body.get("response_format")))
    return config


def response_format(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    kind = value.get("type")
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        config: dict[str, Any] = {"responseMimeType": "application/json"}
        if isinstance(schema, dict):
            config["responseJsonSchema"] = reduce_schema(schema)
        return config
    return {}
