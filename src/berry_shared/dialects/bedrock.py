"""``backend_type = "bedrock"``: Amazon Bedrock's Converse and ConverseStream APIs.

``POST {base_url}/model/{modelId}/converse`` (or ``/converse-stream``), the model id one
percent-encoded path segment exactly as boto3 sends it (``:`` as ``%3A``, an inference
profile ARN's ``/`` as ``%2F``). ``api_key = ""`` signs with SigV4 for service ``bedrock`` and
the default AWS credential chain (on Lambda, the function's role: no key in any config); a
non-empty ``api_key`` is a Bedrock API key, sent as a bearer token. Translation lives in
bedrock_request.py (OpenAI to Converse) and bedrock_response.py (Converse to OpenAI); signing
and credentials in bedrock_signer.py.

Errors (REST-JSON: ``x-amzn-ErrorType: <Name>:<namespace>`` and a ``{"message"}`` body):
throttling, overload, a model not ready and server errors fail over; ValidationException is
the client's mistake and comes back OpenAI-shaped with Bedrock's message (unless it says the
configured model id is wrong, which is this backend's problem); access denied and an
unrecognized client are the auth class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from ..backend_state import ErrorClass
from ..chat_request import ChatRequest
from ..config import Provider
from ..transport import HttpRequest
from .base import (
    MIN_SCRUBBED_SECRET,
    REDACTED,
    AttemptFailed,
    ClientMistake,
    Completion,
    Dialect,
    StreamDecoder,
    parse_retry_after,
    status_error,
)
from .bedrock_request import converse_body
from .bedrock_response import DETAIL_LIMIT, ConverseStream, completion
from .bedrock_signer import (
    CredentialSource,
    SigV4Signer,
    bedrock_region,
    host_header,
)

__all__ = ["BedrockDialect", "bedrock_region", "model_path"]

EVENT_STREAM = "application/vnd.amazon.eventstream"
# Error names (x-amzn-ErrorType) that fail over, by class: the Converse operations' errors in
# botocore's service model, and the AWS front end's authentication errors.
FAILOVER_ERRORS = {
    "ThrottlingException": ErrorClass.RATE_LIMIT,
    "ServiceQuotaExceededException": ErrorClass.RATE_LIMIT,
    "ServiceUnavailableException": ErrorClass.SERVER,
    "ModelNotReadyException": ErrorClass.SERVER,
    "InternalServerException": ErrorClass.SERVER,
    "ModelErrorException": ErrorClass.SERVER,
    "ModelTimeoutException": ErrorClass.TIMEOUT,
    "ResourceNotFoundException": ErrorClass.MODEL,
    "AccessDeniedException": ErrorClass.AUTH,
    "UnrecognizedClientException": ErrorClass.AUTH,
    "InvalidSignatureException": ErrorClass.AUTH,
    "IncompleteSignatureException": ErrorClass.AUTH,
    "ExpiredTokenException": ErrorClass.AUTH,
    "MissingAuthenticationTokenException": ErrorClass.AUTH,
}
# ValidationException messages about the configured model, not the client's request.
MODEL_MISTAKES = ("model identifier is invalid", "with on-demand throughput isn")
# Headers Berry sets itself for Bedrock (a configured header of the same name is ignored).
OWN_HEADERS = frozenset(
    {"content-type", "host", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"}
)


def model_path(model: str, stream: bool) -> str:
    """The request path for ``model``, encoded like botocore's REST serializer encodes a
    non-greedy URI label (only ``-._~`` and alphanumerics stay as they are)."""
    operation = "converse-stream" if stream else "converse"
    return f"/model/{quote(model, safe='-._~')}/{operation}"


class BedrockDialect(Dialect):
    backend_type = "bedrock"
    stream_content_type = EVENT_STREAM

    def __init__(self, provider_id: str, provider: Provider) -> None:
        super().__init__(provider_id, provider)
        self.base_url = provider.base_url.rstrip("/")
        headers = {
            name: value
            for name, value in provider.headers.items()
            if name.lower() not in OWN_HEADERS
        }
        headers["Host"] = host_header(self.base_url)
        headers["Content-Type"] = "application/json"
        self.signer: SigV4Signer | None = None
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        else:
            # Raises ValueError when no region is known: a start-up error, not a 403 later.
            region = bedrock_region(self.base_url)
            self.signer = SigV4Signer(region, CredentialSource.from_default_chain())
        self.headers = headers
        # (model, stream) -> the URL, percent-encoded as signed and sent.
        self._urls: dict[tuple[str, bool], str] = {}

    # -- requests ------------------------------------------------------------------------------

    def chat_request(self, chat: ChatRequest, model: str) -> HttpRequest:
        body = orjson.dumps(converse_body(chat.body))
        url = self._url(model, chat.stream)
        headers = self.headers
        if self.signer is not None:
            headers = dict(headers)
            if not self.signer.sign(url, headers, body):
                # This backend's auth failure, found without a round trip to Bedrock.
                raise AttemptFailed(ErrorClass.AUTH, "no AWS credentials found")
        return HttpRequest(url, headers, body, "POST", self.read_timeout, encoded_url=True)

    def _url(self, model: str, stream: bool) -> str:
        url = self._urls.get((model, stream))
        if url is None:
            url = self._urls[(model, stream)] = self.base_url + model_path(model, stream)
        return url

    # -- answers -------------------------------------------------------------------------------

    def failure(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailed | ClientMistake:
        name = error_name(headers, body)
        error = FAILOVER_ERRORS.get(name)
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if error is None and name == "ValidationException":
            message = self.error_message(body).decode("utf-8", "replace").lower()
            if any(mistake in message for mistake in MODEL_MISTAKES):
                error = ErrorClass.MODEL
        if error is None:
            error = status_error(status)
        if error is None:
            return ClientMistake(status, self.client_error(status, body))
        return AttemptFailed(error, self._detail(status, name, error, body), retry_after)

    def _detail(self, status: int, name: str, error: ErrorClass, body: bytes) -> str:
        label = f"{name} (HTTP {status})" if name else f"HTTP {status}"
        signer = self.signer
        if error is ErrorClass.AUTH and signer is not None and signer.credentials.problem:
            return f"{label}: {signer.credentials.problem}"
        if error is ErrorClass.AUTH:
            # Signature errors echo the canonical request; nothing of it is worth showing.
            return label
        message = self.scrub(self.error_message(body)[:DETAIL_LIMIT])
        return f"{label}: {message.decode('utf-8', 'replace')}" if message else label

    def error_message(self, body: bytes) -> bytes:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body[:2000]
        if isinstance(parsed, dict):
            message = parsed.get("message") or parsed.get("Message")
            if isinstance(message, str):
                return message[:2000].encode()
        return body[:2000]

    def completion(self, body: bytes, content_type: str, chat: ChatRequest) -> Completion:
        return completion(body, chat)

    def stream_decoder(self, chat: ChatRequest) -> StreamDecoder:
        return ConverseStream(chat, self.client_error, self.scrub)

    def scrub(self, body: bytes) -> bytes:
        body = super().scrub(body)
        if self.signer is not None:
            for secret in self.signer.credentials.secrets():
                if len(secret) >= MIN_SCRUBBED_SECRET and secret in body:
                    body = body.replace(secret, REDACTED)
        return body


def error_name(headers: Mapping[str, str], body: bytes) -> str:
    """The error's name: ``x-amzn-ErrorType`` (``Name:namespace``), else the body's
    ``__type`` (``namespace#Name``), else ""."""
    value = headers.get("x-amzn-ErrorType") or headers.get("x-amzn-errortype") or ""
    if not value and body.startswith(b"{"):
        try:
            parsed: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        kind = parsed.get("__type") if isinstance(parsed, dict) else None
        value = kind.rpartition("#")[2] if isinstance(kind, str) else ""
    return value.partition(":")[0].strip()
