"""Berry's configuration: Berry API's ``config.toml`` format, validated with pydantic.

Loading does three things in order: parse TOML, replace ``${VAR}`` (or ``${VAR:-default}``)
in every string from the environment, validate. Every problem is reported at once, one line
each, naming the file, the key path and the reason, so a user fixes a bad file in one pass.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_CONFIG_FILE = "config.toml"
PREMIUM_TAG = "premium"

# Strategy names Berry API accepts. Berry routes every model with SmartAI; the older names are
# accepted so an existing config.toml loads unchanged, and `berry check-config` says so.
Strategy = Literal[
    "smart_ai",
    "weighted_random",
    "round_robin",
    "least_latency",
    "failover",
    "random",
    "weighted_failover",
    "smart_weighted_failover",
]
LEGACY_STRATEGIES = tuple(name for name in get_args(Strategy) if name != "smart_ai")

PositiveSeconds = Annotated[float, Field(gt=0)]
Penalty = Annotated[float, Field(ge=0, le=1)]


class _Section(BaseModel):
    # Unknown keys are errors: a typo such as `wieght = 5` must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfidenceAdjustments(_Section):
    success_boost: Penalty = 0.1
    network_error_penalty: Penalty = 0.3
    auth_error_penalty: Penalty = 0.8
    rate_limit_penalty: Penalty = 0.1
    server_error_penalty: Penalty = 0.2
    model_error_penalty: Penalty = 0.3
    timeout_penalty: Penalty = 0.2


class SmartAISettings(_Section):
    initial_confidence: Annotated[float, Field(gt=0, le=1)] = 0.8
    min_confidence: Annotated[float, Field(gt=0, le=1)] = 0.05
    enable_time_decay: bool = True
    lightweight_check_interval_seconds: PositiveSeconds = 600
    exploration_ratio: Annotated[float, Field(ge=0, le=1)] = 0.2
    non_premium_stability_bonus: Annotated[float, Field(ge=1, le=10)] = 1.1
    confidence_adjustments: ConfidenceAdjustments = ConfidenceAdjustments()

    @model_validator(mode="after")
    def _min_below_initial(self) -> SmartAISettings:
        if self.min_confidence > self.initial_confidence:
            raise ValueError("min_confidence must not exceed initial_confidence")
        return self


class HedgingSettings(_Section):
    """A second attempt on another backend when the first is slower than that backend usually
    is; the first answer wins and the other attempt is cancelled (see hedging.py)."""

    enabled: bool = True
    # Attempts in flight at once for one request (2: the first and one hedge).
    max_parallel: Annotated[int, Field(ge=2, le=5)] = 2
    # The delay is this quantile of the backend's recent latency, within the bounds below.
    delay_quantile: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    min_delay_seconds: PositiveSeconds = 0.5
    # Also the delay while a backend has fewer than min_samples recent latencies.
    max_delay_seconds: PositiveSeconds = 10
    min_samples: Annotated[int, Field(ge=1, le=100)] = 20

    @model_validator(mode="after")
    def _bounds(self) -> HedgingSettings:
        if self.min_delay_seconds > self.max_delay_seconds:
            raise ValueError("min_delay_seconds must not exceed max_delay_seconds")
        return self


class HedgingOverride(_Section):
    """``[models.<key>.hedging]``: any of ``[settings.hedging]``'s keys, for one model."""

    enabled: bool | None = None
    max_parallel: Annotated[int, Field(ge=2, le=5)] | None = None
    delay_quantile: Annotated[float, Field(ge=0.5, le=0.999)] | None = None
    min_delay_seconds: PositiveSeconds | None = None
    max_delay_seconds: PositiveSeconds | None = None
    min_samples: Annotated[int, Field(ge=1, le=100)] | None = None

    def apply(self, base: HedgingSettings) -> HedgingSettings:
        return HedgingSettings.model_validate(
            {**base.model_dump(), **self.model_dump(exclude_none=True)}
        )


class Settings(_Section):
    health_check_interval_seconds: PositiveSeconds = 30
    request_timeout_seconds: PositiveSeconds = 30
    max_retries: Annotated[int, Field(ge=0, le=20)] = 3
    circuit_breaker_failure_threshold: Annotated[int, Field(ge=1)] = 5
    circuit_breaker_timeout_seconds: PositiveSeconds = 60
    recovery_check_interval_seconds: PositiveSeconds = 120
    max_internal_retries: Annotated[int, Field(ge=0, le=10)] = 2
    health_check_timeout_seconds: PositiveSeconds = 10
    max_request_body_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    # All request headers together; past it the client gets 431 (or a closed connection).
    max_request_header_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    # A client must have sent its headers and body within this, or it is cut off.
    client_read_timeout_seconds: PositiveSeconds = 30
    # A non-stream upstream answer larger than this is that backend's failure (never held whole).
    max_response_body_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    # Any stream ends (with an SSE error event) after this long.
    max_stream_duration_seconds: PositiveSeconds = 600
    # Browser origins allowed to call Berry (CORS); empty = CORS off. "*" allows any origin.
    cors_allow_origins: list[Annotated[str, Field(pattern=r"^(\*|https?://[^/\s]+)$")]] = []
    state_store: Literal["memory", "dynamodb"] = "memory"
    smart_ai: SmartAISettings = SmartAISettings()
    hedging: HedgingSettings = HedgingSettings()


BackendType = Literal["openai", "claude", "gemini", "bedrock"]


class Provider(_Section):
    name: Annotated[str, Field(min_length=1)]
    base_url: Annotated[str, Field(min_length=1)]
    # Empty for a provider that wants no key (a local Ollama or vLLM): no Authorization sent.
    api_key: Annotated[str, Field(repr=False)]
    models: Annotated[list[str], Field(min_length=1)]
    headers: dict[str, str] = {}
    enabled: bool = True
    timeout_seconds: PositiveSeconds = 30
    max_retries: Annotated[int, Field(ge=0, le=20)] = 3
    backend_type: BackendType = "openai"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+(/\S*)?", value):
            raise ValueError("must be an http:// or https:// URL with a host and no spaces")
        if "@" in value.split("/", 3)[2]:
            raise ValueError("must not carry credentials (user:password@); use api_key or headers")
        return value

    @field_validator("headers")
    @classmethod
    def _no_auth_header(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in {"authorization", "host", "content-length"}:
                raise ValueError(f"header {name!r} is set by Berry and cannot be overridden")
        return value

    @model_validator(mode="after")
    def _base_url_fits_type(self) -> Provider:
        path = urlsplit(self.base_url).path.rstrip("/")
        if self.backend_type == "bedrock" and path:
            raise ValueError(
                "base_url: a bedrock base_url is the runtime endpoint without a path, e.g. "
                "https://bedrock-runtime.us-east-1.amazonaws.com"
            )
        return self

    @property
    def api_base(self) -> str:
        """The base URL ending in ``/v1``, whether or not the config wrote it."""
        base = self.base_url.rstrip("/")
        return base if base.endswith("/v1") else base + "/v1"


class Price(_Section):
    """USD per million tokens; cached prompt tokens cost ``cached_input_per_million`` (the
    input price unless set)."""

    input_per_million: Annotated[float, Field(ge=0)]
    output_per_million: Annotated[float, Field(ge=0)]
    cached_input_per_million: Annotated[float, Field(ge=0)] | None = None


class Backend(_Section):
    provider: Annotated[str, Field(min_length=1)]
    model: Annotated[str, Field(min_length=1)]
    weight: Annotated[float, Field(gt=0, le=100)] = 1.0
    priority: Annotated[int, Field(ge=0, le=10)] = 0
    enabled: bool = True
    tags: list[str] = []
    billing_mode: Literal["per_token", "per_request"] = "per_token"
    price: Price | None = None

    @property
    def key(self) -> str:
        """``provider:model``: how a backend is named in headers, metrics and state."""
        return f"{self.provider}:{self.model}"

    @property
    def is_premium(self) -> bool:
        return PREMIUM_TAG in self.tags


class Model(_Section):
    name: Annotated[str, Field(min_length=1)]
    strategy: Strategy = "smart_ai"
    enabled: bool = True
    backends: Annotated[list[Backend], Field(min_length=1)]
    hedging: HedgingOverride | None = None


class RateLimit(_Section):
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    requests_per_hour: Annotated[int, Field(ge=1)] | None = None
    requests_per_day: Annotated[int, Field(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None
    tokens_per_day: Annotated[int, Field(ge=1)] | None = None

    def token_windows(self) -> list[tuple[int, int]]:
        """``(window_seconds, token limit)`` for every token limit that is set."""
        pairs = ((60, self.tokens_per_minute), (86400, self.tokens_per_day))
        return [(seconds, limit) for seconds, limit in pairs if limit is not None]

    def windows(self) -> list[tuple[int, int]]:
        """``(window_seconds, limit)`` for every request limit that is set."""
        pairs = (
            (60, self.requests_per_minute),
            (3600, self.requests_per_hour),
            (86400, self.requests_per_day),
        )
        return [(seconds, limit) for seconds, limit in pairs if limit is not None]


class User(_Section):
    name: Annotated[str, Field(min_length=1)]
    # Printable ASCII only: HTTP headers travel as latin-1, so any other token could never match.
    token: Annotated[str, Field(min_length=16, pattern=r"^[\x21-\x7e]+$", repr=False)]
    allowed_models: list[str] = []
    enabled: bool = True
    tags: list[str] = []
    admin: bool | None = None
    rate_limit: RateLimit | None = None
    # Spend (from backend prices) allowed per calendar month, UTC; then 429 insufficient_quota.
    monthly_budget_usd: Annotated[float, Field(gt=0)] | None = None

    @property
    def is_admin(self) -> bool:
        # Berry API's rule: unrestricted users are admins unless they opt out explicitly.
        if self.admin is not None:
            return self.admin
        return not self.allowed_models


class LegacyGlobal(_Section):
    """Berry API's older ``[global]`` section: its timeouts and retries become ``[settings]``
    (where ``[settings]`` does not set them), the server keys are for ``berry serve``."""

    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    log_level: str | None = None
    health_check_interval: PositiveSeconds | None = None
    request_timeout: PositiveSeconds | None = None
    max_retries: Annotated[int, Field(ge=0, le=20)] | None = None

    SETTINGS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("health_check_interval", "health_check_interval_seconds"),
        ("request_timeout", "request_timeout_seconds"),
        ("max_retries", "max_retries"),
    )

    def notes(self) -> list[str]:
        notes = [
            f"global.{old}: Berry API's [global] key, applied as settings.{new}"
            for old, new in self.SETTINGS
            if getattr(self, old) is not None
        ]
        notes.extend(
            f"global.{key}: ignored; use berry serve --host/--port/--log-level or BIND_ADDRESS"
            for key in ("host", "port", "log_level")
            if getattr(self, key) is not None
        )
        return notes


class Config(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    legacy_global: LegacyGlobal | None = Field(default=None, alias="global")
    settings: Settings = Settings()
    providers: dict[str, Provider] = {}
    models: dict[str, Model] = {}
    users: dict[str, User] = {}

    @model_validator(mode="before")
    @classmethod
    def _legacy_global(cls, data: Any) -> Any:
        """Carry ``[global]``'s settings into ``[settings]`` unless it sets them itself."""
        if not isinstance(data, dict) or not isinstance(data.get("global"), dict):
            return data
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            return data
        settings = dict(settings)
        for old, new in LegacyGlobal.SETTINGS:
            if old in data["global"] and new not in settings:
                settings[new] = data["global"][old]
        return {**data, "settings": settings}

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        problems: list[str] = []
        public_names: dict[str, str] = {}
        for key, model in self.models.items():
            if model.name in public_names:
                problems.append(
                    f"models.{key}.name: {model.name!r} is also the name of "
                    f"models.{public_names[model.name]}"
                )
            public_names[model.name] = key
            if model.name != key and model.name in self.models:
                problems.append(
                    f"models.{key}.name: {model.name!r} is the key of another model "
                    "(allowed_models could not tell them apart)"
                )
            seen: set[str] = set()
            for index, backend in enumerate(model.backends):
                where = f"models.{key}.backends[{index}]"
                provider = self.providers.get(backend.provider)
                if provider is None:
                    problems.append(f"{where}.provider: unknown provider {backend.provider!r}")
                elif backend.model not in provider.models:
                    problems.append(
                        f"{where}.model: {backend.model!r} is not in "
                        f"providers.{backend.provider}.models"
                    )
                if backend.key in seen:
                    problems.append(f"{where}: backend {backend.key!r} is listed twice")
                seen.add(backend.key)
        tokens: dict[str, str] = {}
        for user_id, user in self.users.items():
            if user.token in tokens:
                # The token itself is a secret: name only the users that share it.
                problems.append(f"users.{user_id}.token: same token as users.{tokens[user.token]}")
            tokens[user.token] = user_id
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def warnings(self) -> list[str]:
        """Things that load but that a user probably wants to know about."""
        notes = []
        for key, model in self.models.items():
            if model.strategy in LEGACY_STRATEGIES:
                notes.append(
                    f"models.{key}.strategy: {model.strategy!r} is routed with smart_ai "
                    "(Berry's only strategy)"
                )
        if not self.users:
            notes.append("users: no users are configured, so every API request will get 401")
        public_names = {model.name for model in self.models.values()}
        for user_id, user in self.users.items():
            for model_ref in user.allowed_models:
                if model_ref not in self.models and model_ref not in public_names:
                    notes.append(
                        f"users.{user_id}.allowed_models: {model_ref!r} names no model "
                        "(it grants nothing)"
                    )
        if self.legacy_global is not None:
            notes.extend(self.legacy_global.notes())
        # What template.yaml's functions cannot honour (berry_handlers/serverless.py fits the
        # config to them): a 25 s deadline before API Gateway's 29 s, streams within Lambda's
        # 900 s, bodies within its 6 MB payload. Only values set in the file: the defaults
        # are documented with the deployment.
        given, settings = self.settings.model_fields_set, self.settings
        if "request_timeout_seconds" in given and settings.request_timeout_seconds > 25:
            notes.append(
                f"settings.request_timeout_seconds: {settings.request_timeout_seconds:g} s "
                "cannot fit the API path on AWS Lambda, where Berry answers 504 after 25 s "
                "(API Gateway cuts at 29 s); longer requests need the streaming route"
            )
        if "max_stream_duration_seconds" in given and settings.max_stream_duration_seconds > 890:
            notes.append(
                f"settings.max_stream_duration_seconds: {settings.max_stream_duration_seconds:g}"
                " s cannot fit AWS Lambda, where streams end after 890 s (its limit is 900 s)"
            )
        if "max_request_body_bytes" in given and settings.max_request_body_bytes > 5 * 2**20:
            notes.append(
                f"settings.max_request_body_bytes: {settings.max_request_body_bytes} cannot fit "
                "AWS Lambda's 6 MB payload; Berry refuses bodies over 5242880 bytes there"
            )
        return notes


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {problem}" for problem in problems))


# ${NAME}, or ${NAME:-default} for a value used when NAME is unset or empty (as in shells).
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, env: Mapping[str, str], path: str, missing: list[str]) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = env.get(name)
            if value:
                return value
            if default is not None:
                return default
            state = "is not set" if value is None else "is empty"
            missing.append(f"{path}: environment variable {name} {state}")
            return ""

        return _VARIABLE.sub(replace, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else k, missing) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def _describe(error: Any) -> str:
    location = ""
    for part in error["loc"]:
        if isinstance(part, int):
            location += f"[{part}]"
        else:
            location += f".{part}" if location else str(part)
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if not location:
        return message
    return f"{location}: {message}"


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate already-parsed TOML data, interpolating ``${VAR}`` from ``env``."""
    missing: list[str] = []
    resolved = _interpolate(dict(data), os.environ if env is None else env, "", missing)
    problems = list(missing)
    unset_paths = {line.partition(": ")[0] for line in missing}
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            # Cross-reference problems arrive as one error with one line per problem.
            for line in _describe(error).splitlines():
                # An unset variable already explains why its key is empty.
                if line.partition(": ")[0] not in unset_paths:
                    problems.append(line)
    if problems:
        raise ConfigError(source, problems)
    return config


def resolve_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--config`` wins, then ``CONFIG_PATH``, then ``./config.toml``."""
    return Path(explicit or os.environ.get("CONFIG_PATH") or DEFAULT_CONFIG_FILE)


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read, interpolate and validate a config file; raises ``ConfigError``."""
    file = resolve_config_path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(str(file), [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))  # editors on Windows may add a BOM
    except UnicodeDecodeError:
        raise ConfigError(str(file), ["the file is not valid UTF-8"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), [f"invalid TOML: {exc}"]) from None
    return parse_config(data, str(file), env)
