"""What every benchmark target is asked, and the one request that proves it answers right."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

# Also the LiteLLM master key: both gateways authenticate every request.
TOKEN = "sk-bench-0123456789abcdef0123"


def chat_body(model: str, stream: bool) -> str:
    messages = [{"role": "user", "content": "Hello, how are you today?"}]
    return json.dumps({"model": model, "stream": stream, "messages": messages})


def check(url: str, model: str, stream: bool) -> None:
    """One request before the load: a target that answers errors, or answers something that
    is not a chat completion, is not measured (wrk only sees status codes)."""
    request = urllib.request.Request(
        url,
        data=chat_body(model, stream).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url} ({model}) answered {exc.code}: {exc.read()[:300]!r}") from None
    if not _is_answer(body, stream):
        raise RuntimeError(f"{url} ({model}) answered 200 with {body[:300]!r}")


def _is_answer(body: bytes, stream: bool) -> bool:
    if stream:
        lines = body.decode("utf-8", "replace").splitlines()
        data = [line[len("data:") :].strip() for line in lines if line.startswith("data:")]
        if not data or data[-1] != "[DONE]":
            return False
        chunks = [json.loads(item) for item in data[:-1]]
        text = "".join(
            choice["delta"].get("content") or ""
            for chunk in chunks
            for choice in chunk.get("choices", [])
        )
        return bool(text)
    answer = json.loads(body)
    return bool(answer.get("choices") and answer["choices"][0]["message"].get("content"))
