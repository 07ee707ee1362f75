"""OpenAI chat completion bodies as Anthropic Messages requests: pure functions, body in, body out.

Anthropic rejects unknown fields, so the request is built field by field from what the client
sent; OpenAI fields without an Anthropic counterpart are dropped (``frequency_penalty``,
``presence_penalty``, ``logit_bias``, ``logprobs``, ``seed``, ``service_tier``, ``store``,
``metadata``, ``reasoning_effort``, ``response_format`` of type ``json_object`` ...). What
cannot be honoured and would change the answer raises ``Unsupported`` (the relay skips the
backend, and the client gets a 400 if nothing else can serve): ``n > 1``, audio, legacy
``functions``, a stop sequence made only of whitespace (Anthropic rejects it: "stop_sequences:
each stop sequence must contain non-whitespace", BerriAI/litellm#3286), tool-call arguments
that are not a JSON object. Choices where the docs are silent:

- ``max_tokens`` is required by Anthropic; without ``max_completion_tokens`` / ``max_tokens``
  Berry sends ``DEFAULT_MAX_TOKENS`` (4096: every Claude model accepts it, the oldest ones
  cap their output there).
- ``temperature`` is clamped to Anthropic's 0..1. When both ``temperature`` and ``top_p`` are
  given only ``temperature`` goes (Claude 4.1 to 4.6 reject the pair, and Anthropic advises
  setting one of them). Models from Claude 4.7 on (told by name, ``takes_sampling``) reject
  sampling parameters altogether, so none are sent to them.
- Empty or whitespace-only text is left out (Anthropic rejects such text blocks); a message
  left with nothing is left out too. A final assistant message is sent as Anthropic's
  prefill, without its trailing whitespace (which Anthropic rejects).
- Tool-call ids outside Anthropic's ``^[a-zA-Z0-9_-]+$`` get ``_`` for each other character,
  the same way in ``tool_use`` and ``tool_result``, so pairs still match.
- ``response_format`` ``json_schema`` becomes ``output_config.format`` (structured outputs);
  a model without them answers 400 with Anthropic's message.

Message content (text, images, PDF files) is translated in ``anthropic_content``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from .anthropic_content import (
    ASSISTANT_PARTS,
    SYSTEM_PARTS,
    TOOL_PARTS,
    USER_PARTS,
    content_blocks,
)
from .base import Unsupported, json_object

DEFAULT_MAX_TOKENS = 4096
# The first Claude generation that rejects temperature / top_p / top_k ("`temperature` is
# deprecated for this model.", Comfy-Org/ComfyUI#13923 for claude-opus-4-7).
FIRST_WITHOUT_SAMPLING = (4, 7)
# claude-<family>-<major>[-<minor>], also inside ids such as "anthropic.claude-opus-4-7-v1:0";
# a date suffix (-20250514) is not a minor version. Old names (claude-3-5-sonnet) do not match.
_GENERATION = re.compile(r"claude-[a-z]+-(\d+)(?:-(\d{1,2}))?(?!\d)")
_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
_NOT_TOOL_ID = re.compile(r"[^a-zA-Z0-9_-]")

_TOOL_CHOICES: dict[str, str] = {"auto": "auto", "none": "none", "required": "any"}


@lru_cache(maxsize=256)
def takes_sampling(model: str) -> bool:
    """Whether the model accepts temperature / top_p / top_k (known from its name)."""
    if "mythos" in model:
        return False  # claude-mythos-preview: released with the 4.7 rules
    match = _GENERATION.search(model)
    if match is None:
        return True  # older naming (claude-3-5-sonnet-...) or a proxy's alias
    generation = (int(match.group(1)), int(match.group(2) or 0))
    return generation < FIRST_WITHOUT_SAMPLING


def messages_request(body: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The Anthropic Messages request for an OpenAI chat body; raises ``Unsupported``."""
    n = body.get("n")
    if n is not None and n != 1:
        raise Unsupported(
            "Claude backends return one choice per request: 'n' must be 1 (or left out).",
            param="n",
        )
    _refuse_unsupported(body)
    system, messages = translate_messages(body["messages"])
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens(body),
        "messages": messages,
    }
    if system:
        request["system"] = system
    if stream:
        request["stream"] = True
    request.update(sampling(body, model))
    stop = stop_sequences(body.get("stop"))
    if stop:
        request["stop_sequences"] = stop
    tools = body.get("tools")
    if tools:
        request["tools"] = translate_tools(tools)
        choice = tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            request["tool_choice"] = choice
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str):
        request["metadata"] = {"user_id": user}
    output_format = json_schema_format(body.get("response_format"))
    if output_format is not None:
        request["output_config"] = {"format": output_format}
    return request


def _refuse_unsupported(body: dict[str, Any]) -> None:
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise Unsupported("Claude backends cannot answer with audio.", param="modalities")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise Unsupported(
            "Claude backends do not take the legacy 'functions'; use 'tools' instead.",
            param="functions",
        )


def max_tokens(body: dict[str, Any]) -> Any:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    return DEFAULT_MAX_TOKENS if value is None else value


def sampling(body: dict[str, Any], model: str) -> dict[str, Any]:
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    top_k = body.get("top_k")  # not OpenAI's, but sent by clients written for vLLM and such
    if temperature is None and top_p is None and top_k is None:
        return {}
    if not takes_sampling(model):
        return {}
    out: dict[str, Any] = {}
    if temperature is not None:
        out["temperature"] = _clamp(temperature, 0.0, 1.0)
    elif top_p is not None:
        out["top_p"] = top_p
    if top_k is not None:
        out["top_k"] = top_k
    return out


def _clamp(value: Any, low: float, high: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value  # not a number: Anthropic's own 400 names the problem
    return min(max(value, low), high)


def stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list):
        raise Unsupported("'stop' must be a string or an array of strings.", param="stop")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise Unsupported("'stop' must be a string or an array of strings.", param="stop")
        if not item:
            continue  # an empty sequence stops nothing anywhere
        if not item.strip():
            raise Unsupported(
                "Claude backends cannot stop on a sequence made only of whitespace "
                f"({item!r}): Anthropic rejects such stop sequences.",
                param="stop",
            )
        out.append(item)
    return out


# -- messages ---------------------------------------------------------------------------------


def translate_messages(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Top-level ``system`` blocks and Anthropic turns (same-role messages merged, tool
    results in user turns)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message.get("role")
        path = f"messages[{index}]"
        if role == "system" or role == "developer":
            system.extend(content_blocks(message.get("content"), path, SYSTEM_PARTS))
            continue
        if role == "user":
            blocks = content_blocks(message.get("content"), path, USER_PARTS)
        elif role == "assistant":
            blocks = assistant_blocks(message, path)
        elif role == "tool":
            role = "user"
            blocks = [tool_result(message, path)]
        else:
            raise Unsupported(
                f"'{path}.role' must be system, developer, user, assistant or tool "
                f"for Claude backends (got {str(role)[:40]!r}).",
                param=f"{path}.role",
            )
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if turns and turns[-1]["role"] == "assistant":
        _trim_prefill(turns)
    return system, turns


def _trim_prefill(turns: list[dict[str, Any]]) -> None:
    """Anthropic rejects a final assistant turn whose text ends in whitespace."""
    blocks = turns[-1]["content"]
    last = blocks[-1]
    if last["type"] != "text":
        return
    text = last["text"].rstrip()
    if text:
        blocks[-1] = {**last, "text": text}
        return
    blocks.pop()
    if not blocks:
        turns.pop()


def assistant_blocks(message: dict[str, Any], path: str) -> list[dict[str, Any]]:
    blocks = content_blocks(message.get("content"), path, ASSISTANT_PARTS)
    if message.get("function_call") is not None:
        raise Unsupported(
            f"Claude backends do not take the legacy 'function_call' ('{path}'); use 'tool_calls'.",
            param=path,
        )
    calls = message.get("tool_calls")
    if calls:
        for index, call in enumerate(calls):
            blocks.append(tool_use(call, f"{path}.tool_calls[{index}]"))
    return blocks


def tool_use(call: Any, at: str) -> dict[str, Any]:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise Unsupported(f"'{at}' must be a function tool call.", param=at)
    function = call.get("function")
    if not isinstance(function, dict):
        raise Unsupported(f"'{at}.function' must be an object.", param=at)
    return {
        "type": "tool_use",
        "id": tool_id(call.get("id"), f"{at}.id"),
        "name": function.get("name"),
        "input": tool_input(function.get("arguments"), f"{at}.function.arguments"),
    }


def tool_input(arguments: Any, at: str) -> dict[str, Any]:
    """The arguments string of a tool call as the input object Anthropic wants."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    parsed = json_object(arguments)
    if parsed is None:
        raise Unsupported(
            f"'{at}' must be a JSON object for Claude backends (Anthropic takes tool input as "
            "an object).",
            param=at,
        )
    return parsed


def tool_id(value: Any, at: str) -> str:
    if not isinstance(value, str) or not value:
        raise Unsupported(f"'{at}' must be a non-empty string.", param=at)
    if _TOOL_ID.fullmatch(value):
        return value
    return _NOT_TOOL_ID.sub("_", value)


def tool_result(message: dict[str, Any], path: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": tool_id(message.get("tool_call_id"), f"{path}.tool_call_id"),
    }
    content = message.get("content")
    if isinstance(content, str):
        if content.strip():
            block["content"] = content
    else:
        blocks = content_blocks(content, path, TOOL_PARTS)
        if blocks:
            block["content"] = blocks
    return block


# -- tools ------------------------------------------------------------------------------------


def translate_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Unsupported("'tools' must be an array.", param="tools")
    return [translate_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools)]


def translate_tool(tool: Any, at: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if (
        not isinstance(tool, dict)
        or not isinstance(function, dict)
        or tool.get("type") != "function"
    ):
        raise Unsupported(f"Claude backends take function tools only ('{at}').", param=at)
    schema = function.get("parameters")
    if schema is None:
        schema = {"type": "object", "properties": {}}
    elif isinstance(schema, dict) and "type" not in schema:
        schema = {"type": "object", **schema}
    out: dict[str, Any] = {"name": function.get("name"), "input_schema": schema}
    description = function.get("description")
    if isinstance(description, str) and description:
        out["description"] = description
    return out


def tool_choice(choice: Any, parallel_tool_calls: Any) -> dict[str, Any] | None:
    """OpenAI's ``tool_choice`` and ``parallel_tool_calls`` as Anthropic's ``tool_choice``."""
    out: dict[str, Any]
    if choice is None:
        if parallel_tool_calls is not False:
            return None
        out = {"type": "auto"}
    elif isinstance(choice, str) and choice in _TOOL_CHOICES:
        out = {"type": _TOOL_CHOICES[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise Unsupported("'tool_choice.function.name' must be a string.", "tool_choice")
        out = {"type": "tool", "name": name}
    else:
        raise Unsupported(
            "Claude backends take 'tool_choice' auto, none, required or a named function.",
            param="tool_choice",
        )
    if parallel_tool_calls is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def json_schema_format(response_format: Any) -> dict[str, Any] | None:
    """``response_format`` of type ``json_schema`` as structured outputs; None otherwise."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return None
    return {"type": "json_schema", "schema": schema}
