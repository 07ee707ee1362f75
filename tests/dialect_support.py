"""What the provider tests share. The dialect tests (Anthropic, Bedrock, Gemini): OpenAI-side
requests and tools, and Berry configured with one public model in front of a provider's fake.
The fakes' own tests: a tool's JSON schema, and the input the fakes fill in for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson

from berry_shared.chat_request import ChatRequest, parse_chat_request
from berry_shared.config import Config, parse_config
from support import ADMIN_TOKEN, USER_TOKEN, Berry, DemoUpstream, provider_key

PUBLIC = "test-model"  # what clients ask Berry for
HELLO = [{"role": "user", "content": "say hello to me"}]  # 4 input "tokens" for the fakes
HTTP = httpx.Client(timeout=20)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
# What the Anthropic and Bedrock fakes fill in: "<name>-value" and an enum's first value.
WEATHER_ARGS = {"city": "city-value", "unit": "celsius"}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


# Provider-side tools (the fakes' tests wrap these in Anthropic's and Bedrock's tool shapes).
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "verbose": {"type": "boolean"},
    },
    "required": ["city", "days", "unit"],
}
WEATHER_INPUT = {"city": "city-value", "days": 1, "unit": "celsius"}  # required ones only
TIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string"}},
    "required": ["zone"],
}


def chat_request(body: dict[str, Any]) -> ChatRequest:
    """A client's body for the public model, parsed the way Berry parses it."""
    return parse_chat_request(orjson.dumps({"model": PUBLIC, **body}))


def demo_provider(upstream: DemoUpstream, pid: str = "demo") -> dict[str, Any]:
    """An OpenAI-compatible provider (a demo upstream) serving "up-model", to fail over to."""
    return {
        "name": pid.capitalize(),
        "base_url": upstream.base_url,
        "api_key": provider_key(pid),
        "models": ["up-model"],
    }


def one_model_config(
    providers: dict[str, dict[str, Any]],
    backends: list[dict[str, Any]],
    model: str = PUBLIC,
    settings: dict[str, Any] | None = None,
) -> Config:
    """Berry with one public model (id and name ``model``) served by ``backends``, an admin and
    a user allowed that model. No hedging: which backend answered must depend on failures
    alone."""
    return parse_config(
        {
            "settings": {
                "request_timeout_seconds": 10,
                "hedging": {"enabled": False},
                **(settings or {}),
            },
            "providers": providers,
            "models": {model: {"name": model, "backends": backends}},
            "users": {
                "admin": {"name": "Admin", "token": ADMIN_TOKEN},
                "user": {"name": "User", "token": USER_TOKEN, "allowed_models": [model]},
            },
        }
    )


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether ``condition`` came true within ``seconds``: a fake records what it saw on its
    own thread, a moment after the client is done."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def berry_client(berry: Berry, **options: Any) -> openai.OpenAI:
    """The openai SDK aimed at Berry as the test user, one attempt per call."""
    return openai.OpenAI(base_url=berry.base_url, api_key=USER_TOKEN, max_retries=0, **options)
