"""SigV4 for Bedrock (service ``bedrock``) with botocore's signer, and the credentials it uses.

Credentials come from botocore's default chain (environment, shared files, container and
instance metadata...): on Lambda the function's role, with no key in any config. Temporary
credentials rotate, so each signature freezes the current ones (cheap) and nothing keeps a
frozen copy for long. When they near expiry, botocore would refresh them synchronously inside
the signing call, a blocking HTTP call to a metadata endpoint on the event loop; instead a
short-lived thread refreshes them ahead of time while requests keep signing with the still
valid current set.

botocore is imported here and in bedrock_events.py only, and only once a Bedrock provider is
built. Signing goes through ``SigV4Auth``'s own steps (canonical request, string to sign,
signature) rather than ``add_auth``: that one logs the canonical request at DEBUG, and the
canonical request holds the session token.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("berry.bedrock")

SERVICE = "bedrock"
# botocore's defaults: refresh attempts begin 15 min before expiry, and 10 min before it every
# caller blocks until the refresh is done.
ADVISORY_REFRESH_SECONDS = 15 * 60
MANDATORY_REFRESH_SECONDS = 10 * 60
# After a failed background refresh, the next try waits this long (the current set is valid).
REFRESH_RETRY_SECONDS = 30.0
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
_RUNTIME_LABELS = ("bedrock-runtime", "bedrock-runtime-fips")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def bedrock_region(base_url: str, environ: Mapping[str, str] | None = None) -> str:
    """The region to sign for: from the endpoint's host (``bedrock-runtime.<region>.
    amazonaws.com``, its ``-fips`` twin, VPC endpoint names ``vpce-....bedrock-runtime.
    <region>.vpce.amazonaws.com``), else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``.

    Raises ``ValueError`` with a message fit for ``berry check-config`` when neither is known.
    """
    host = (urlsplit(base_url).hostname or "").lower()
    labels = host.split(".")
    for label, following in itertools.pairwise(labels):
        if label in _RUNTIME_LABELS and _REGION.fullmatch(following):
            return following
    env = os.environ if environ is None else environ
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        region = env.get(name, "").strip()
        if region:
            return region
    raise ValueError(
        f"no AWS region for the Bedrock endpoint {host or base_url!r}: use a base_url like "
        "https://bedrock-runtime.<region>.amazonaws.com, or set AWS_REGION"
    )


def host_header(base_url: str) -> str:
    """The Host header for ``base_url`` as botocore signs it: lower case, no default port."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def default_credentials() -> Any:
    """botocore's default credential chain (None when it finds nothing)."""
    import botocore.session

    return botocore.session.get_session().get_credentials()


class CredentialSource:
    """Frozen credentials per signature; temporary ones refreshed on a thread before expiry."""

    def __init__(self, credentials: Any) -> None:
        # botocore Credentials / RefreshableCredentials, or None: no credentials were found.
        self._credentials = credentials
        self._current: Any = None  # the frozen set last handed out
        self._previous: Any = None  # the one before a rotation, for scrubbing late echoes
        self._lock = threading.Lock()
        self._refresher: threading.Thread | None = None
        self._next_refresh = 0.0
        self.problem: str | None = None if credentials is not None else "no AWS credentials found"

    @classmethod
    def from_default_chain(cls) -> CredentialSource:
        try:
            credentials = default_credentials()
        except Exception as exc:  # a broken profile or config file
            source = cls(None)
            source.problem = f"the AWS credential chain failed ({type(exc).__name__})"
            return source
        source = cls(credentials)
        if credentials is not None:
            # Load deferred credentials (SSO, assumed roles) now, at start-up, not on the loop.
            source.frozen()
        return source

    def frozen(self) -> Any:
        """The credentials to sign one request with (botocore ``ReadOnlyCredentials``), or
        None when there are none (``problem`` says why)."""
        credentials = self._credentials
        if credentials is None:
            return None
        current = self._current
        if (
            current is not None
            and self._nearing_expiry(credentials, ADVISORY_REFRESH_SECONDS)
            and not self._nearing_expiry(credentials, MANDATORY_REFRESH_SECONDS)
        ):
            # Still valid for 10 minutes or more: sign with it while a thread refreshes.
            self._refresh_in_background(credentials)
            return current
        try:
            frozen = credentials.get_frozen_credentials()
        except Exception as exc:  # a mandatory refresh failed: no valid credentials
            self.problem = f"AWS credentials could not be refreshed ({type(exc).__name__})"
            return None
        if frozen.access_key is None:
            self.problem = "no AWS credentials found"
            return None
        if current is None or frozen.secret_key != current.secret_key:
            self._previous, self._current = current, frozen
        self.problem = None
        return frozen

    @staticmethod
    def _nearing_expiry(credentials: Any, seconds: int) -> bool:
        refresh_needed = getattr(credentials, "refresh_needed", None)
        return bool(refresh_needed(seconds)) if refresh_needed is not None else False

    def _refresh_in_background(self, credentials: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if (self._refresher is not None and self._refresher.is_alive()) or (
                now < self._next_refresh
            ):
                return
            self._next_refresh = now + REFRESH_RETRY_SECONDS
            # get_frozen_credentials refreshes under botocore's own lock; a failure in this
            # advisory window is logged by botocore and the current set stays in use.
            self._refresher = threading.Thread(
                target=_refresh, args=(credentials,), name="bedrock-credentials", daemon=True
            )
            self._refresher.start()

    def secrets(self) -> list[bytes]:
        """The secret parts of the credentials in use, to scrub from provider text."""
        found: list[bytes] = []
        for frozen in (self._current, self._previous):
            if frozen is not None:
                found.extend(
                    value.encode()
                    for value in (frozen.secret_key, frozen.token, frozen.access_key)
                    if value
                )
        return found


def _refresh(credentials: Any) -> None:
    try:
        credentials.get_frozen_credentials()
    except Exception as exc:  # botocore raises only inside the mandatory window
        logger.warning("refreshing AWS credentials failed (%s)", type(exc).__name__)


class _SigningRequest:
    """The parts of a request botocore's ``SigV4Auth`` reads (``AWSRequest`` duck-typed: its
    header container costs more than the signature itself)."""

    __slots__ = ("body", "context", "headers", "method", "params", "url")

    def __init__(self, url: str, headers: dict[str, str], body: bytes, timestamp: str) -> None:
        self.method = "POST"
        self.url = url
        self.headers = headers
        self.body = body
        self.params: dict[str, str] = {}
        self.context = {"timestamp": timestamp}


class SigV4Signer:
    """Signs Bedrock requests for one region."""

    def __init__(self, region: str, credentials: CredentialSource) -> None:
        from botocore.auth import SigV4Auth

        self.region = region
        self.credentials = credentials
        self._auth_class = SigV4Auth
        # Header names -> botocore's SignedHeaders list: the names barely ever change.
        self._signed_headers: dict[tuple[str, ...], str] = {}

    def sign(self, url: str, headers: dict[str, str], body: bytes) -> bool:
        """Add ``X-Amz-Date``, the session token and ``Authorization`` to ``headers`` (every
        header in it is signed, ``Host`` included, so send them exactly as they are). False
        when there are no credentials to sign with."""
        frozen = self.credentials.frozen()
        if frozen is None:
            return False
        timestamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        headers["X-Amz-Date"] = timestamp
        if frozen.token:
            headers["X-Amz-Security-Token"] = frozen.token
        auth = self._auth_class(frozen, SERVICE, self.region)
        request = _SigningRequest(url, headers, body, timestamp)
        canonical_request = auth.canonical_request(request)
        signature = auth.signature(auth.string_to_sign(request, canonical_request), request)
        names = tuple(headers)
        signed_headers = self._signed_headers.get(names)
        if signed_headers is None:
            signed_headers = auth.signed_headers(auth.headers_to_sign(request))
            self._signed_headers[names] = signed_headers
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={frozen.access_key}/{auth.credential_scope(request)}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
        return True
