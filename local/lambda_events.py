"""The events Lambda hands Berry's handlers, shaped as AWS sends them: an API Gateway REST API
(payload 1.0) proxy event and EventBridge's scheduled event. The Lambda tests and the
cold-start benchmark invoke the handlers with these."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson

USER_AGENT = "OpenAI/Python 1.0"


def rest_event(
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    resource: str | None = None,
    query: dict[str, str] | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    """An API Gateway REST API (payload 1.0) proxy event; ``body`` is JSON-encoded unless it is
    bytes already."""
    headers = {
        "Host": "abc123.execute-api.us-east-1.amazonaws.com",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    raw = None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
    return {
        "resource": resource or path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource or path,
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": str(uuid.uuid4()),
            "accountId": "123456789012",
            "apiId": "abc123",
            "protocol": "HTTP/1.1",
            "requestTimeEpoch": 1795550000000,
            "identity": {"sourceIp": "203.0.113.7", "userAgent": USER_AGENT},
        },
        "body": None
        if raw is None
        else (base64.b64encode(raw).decode() if base64_body else raw.decode()),
        "isBase64Encoded": base64_body,
    }


def schedule_event() -> dict[str, Any]:
    """EventBridge's scheduled event (what runs the probe function)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-11-24T20:00:00Z",
        "region": "us-east-1",
        "detail": {},
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/berry-probe"],
    }
