"""Tests for berry_shared.config: Berry API's config.toml format, validated (SPEC section 2)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from berry_shared.config import (
    LEGACY_STRATEGIES,
    Backend,
    ConfidenceAdjustments,
    Config,
    ConfigError,
    Model,
    Provider,
    RateLimit,
    Settings,
    SmartAISettings,
    User,
    load_config,
    parse_config,
    resolve_config_path,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "local" / "config.example.toml"

API_KEY = "sk-live-SECRET-provider-key-0123456789"
TOKEN = "berry-SECRET-alice-token-0001"
OTHER_TOKEN = "berry-SECRET-bob-token-000002"

# One provider, one model, one user; `# @section` markers take extra lines for that section.
BASE = f"""
[settings]
# @settings

[providers.openai]
name = "OpenAI"
base_url = "https://api.openai.com/v1"
api_key = "{API_KEY}"
models = ["gpt-4o", "gpt-4o-mini"]
# @provider

[models.gpt4o]
name = "gpt-4o"
# @model

[[models.gpt4o.backends]]
provider = "openai"
model = "gpt-4o"
# @backend

[users.alice]
name = "Alice"
token = "{TOKEN}"
# @user

# @extra
"""


def make(replace: dict[str, str] | None = None, **sections: str) -> str:
    """BASE with exact lines replaced and extra lines put at ``# @<section>`` markers."""
    text = BASE
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    for section, lines in sections.items():
        marker = f"# @{section}"
        assert marker in text, marker
        text = text.replace(marker, lines)
    return text


def write(tmp_path: Path, text: str | bytes, name: str = "config.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env=env or {})


def problems(tmp_path: Path, text: str | bytes, env: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    assert info.value.source == str(path)
    return info.value.problems


def assert_secrets_absent(text: str) -> None:
    for secret in (API_KEY, TOKEN, OTHER_TOKEN, "SECRET"):
        assert secret not in text


# --------------------------------------------------------------------------- defaults


SETTINGS_DEFAULTS = {
    "health_check_interval_seconds": 30,
    "request_timeout_seconds": 30,
    "max_retries": 3,
    "circuit_breaker_failure_threshold": 5,
    "circuit_breaker_timeout_seconds": 60,
    "recovery_check_interval_seconds": 120,
    "max_internal_retries": 2,
    "health_check_timeout_seconds": 10,
    # SPEC sections 6 and 8
    "max_request_body_bytes": 10 * 1024 * 1024,
    "cors_allow_origins": [],
    "state_store": "memory",
    # SPEC section 5, containment
    "max_request_header_bytes": 64 * 1024,
    "client_read_timeout_seconds": 30,
    "max_response_body_bytes": 32 * 1024 * 1024,
    "max_stream_duration_seconds": 600,
}
SMART_AI_DEFAULTS = {
    "initial_confidence": 0.8,
    "min_confidence": 0.05,
    "enable_time_decay": True,
    "lightweight_check_interval_seconds": 600,
    "exploration_ratio": 0.2,
    "non_premium_stability_bonus": 1.1,
}
ADJUSTMENT_DEFAULTS = {
    "success_boost": 0.1,
    "network_error_penalty": 0.3,
    "auth_error_penalty": 0.8,
    "rate_limit_penalty": 0.1,
    "server_error_penalty": 0.2,
    "model_error_penalty": 0.3,
    "timeout_penalty": 0.2,
}


def _assert_defaults(settings: Settings) -> None:
    for key, value in SETTINGS_DEFAULTS.items():
        assert getattr(settings, key) == value, key
    for key, value in SMART_AI_DEFAULTS.items():
        assert getattr(settings.smart_ai, key) == value, key
    for key, value in ADJUSTMENT_DEFAULTS.items():
        assert getattr(settings.smart_ai.confidence_adjustments, key) == value, key


def test_settings_model_defaults_match_spec() -> None:
    _assert_defaults(Settings())
    assert set(Settings.model_fields) == {*SETTINGS_DEFAULTS, "smart_ai", "hedging"}
    assert set(SmartAISettings.model_fields) == {*SMART_AI_DEFAULTS, "confidence_adjustments"}
    assert set(ConfidenceAdjustments.model_fields) == set(ADJUSTMENT_DEFAULTS)


def test_file_without_settings_gets_spec_defaults(tmp_path: Path) -> None:
    text = make().replace("[settings]\n", "")
    config = load(tmp_path, text)
    _assert_defaults(config.settings)


def test_one_smart_ai_key_keeps_the_other_defaults(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        make(
            extra="[settings.smart_ai]\nexploration_ratio = 0.5\n"
            "[settings.smart_ai.confidence_adjustments]\ntimeout_penalty = 0.4\n"
        ),
    )
    smart_ai = config.settings.smart_ai
    assert smart_ai.exploration_ratio == 0.5
    assert smart_ai.confidence_adjustments.timeout_penalty == 0.4
    assert smart_ai.initial_confidence == 0.8
    assert smart_ai.confidence_adjustments.auth_error_penalty == 0.8
    assert config.settings.max_retries == 3


def test_provider_backend_model_user_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, make())
    provider = config.providers["openai"]
    assert provider.headers == {}
    assert provider.enabled is True
    assert provider.timeout_seconds == 30
    assert provider.max_retries == 3
    assert provider.backend_type == "openai"

    model = config.models["gpt4o"]
    assert model.name == "gpt-4o"
    assert model.strategy == "smart_ai"
    assert model.enabled is True

    backend = model.backends[0]
    assert backend.weight == 1.0
    assert backend.priority == 0
    assert backend.enabled is True
    assert backend.tags == []
    assert backend.billing_mode == "per_token"
    assert backend.key == "openai:gpt-4o"
    assert backend.is_premium is False

    user = config.users["alice"]
    assert user.allowed_models == []
    assert user.enabled is True
    assert user.tags == []
    assert user.admin is None
    assert user.rate_limit is None
    assert user.is_admin is True  # empty allowed_models and no admin = false
    assert config.warnings() == []


def test_backend_premium_tag() -> None:
    assert Backend(provider="p", model="m", tags=["fast", "premium"]).is_premium is True
    assert Backend(provider="p", model="m", tags=["Premium"]).is_premium is False


def test_rate_limit_windows() -> None:
    assert RateLimit().windows() == []
    assert RateLimit(requests_per_hour=100).windows() == [(3600, 100)]
    assert RateLimit(
        requests_per_minute=10, requests_per_hour=100, requests_per_day=1000
    ).windows() == [(60, 10), (3600, 100), (86400, 1000)]


def test_empty_file_loads_and_warns_about_no_users(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.providers == {} and config.models == {} and config.users == {}
    assert config.warnings() == [
        "users: no users are configured, so every API request will get 401"
    ]


# --------------------------------------------------------------------------- whole files

FULL = """
# Berry API style config.toml, every option set
[settings]
health_check_interval_seconds = 45
request_timeout_seconds = 20
max_retries = 4
max_internal_retries = 1
health_check_timeout_seconds = 8
circuit_breaker_failure_threshold = 3
circuit_breaker_timeout_seconds = 90
recovery_check_interval_seconds = 100
max_request_body_bytes = 2048
state_store = "dynamodb"

[settings.smart_ai]
initial_confidence = 0.9
min_confidence = 0.1
enable_time_decay = false
lightweight_check_interval_seconds = 300
exploration_ratio = 0.1
non_premium_stability_bonus = 1.3

[settings.smart_ai.confidence_adjustments]
success_boost = 0.15
network_error_penalty = 0.35
auth_error_penalty = 0.9
rate_limit_penalty = 0.05
server_error_penalty = 0.25
model_error_penalty = 0.4
timeout_penalty = 0.3

[users.admin]
name = "Administrator"
token = "berry-admin-token-replace-with-secure-token"
allowed_models = []
enabled = true
tags = ["admin", "unlimited"]

[users.user1]
name = "普通用户"
token = "berry-user1-token-replace-with-secure-token"
allowed_models = ["gpt-3.5-turbo", "gpt_4"]
enabled = true
tags = ["user", "basic"]
[users.user1.rate_limit]
requests_per_minute = 60
requests_per_hour = 1000

[users.locked]
name = "Locked"
token = "berry-locked-token-0123456789"
enabled = false
admin = false
rate_limit = { requests_per_day = 5000 }

[providers.openai_primary]
name = "OpenAI Primary Account"
base_url = "https://api.openai.com/v1"
api_key = "sk-your-openai-primary-key-here"
models = ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo"]
enabled = true
timeout_seconds = 30
max_retries = 3
backend_type = "openai"

[providers.azure_openai]
name = "Azure OpenAI Service"
base_url = "https://your-resource.openai.azure.com"
api_key = "your-azure-openai-key-here"
models = ["gpt-4", "gpt-35-turbo"]
timeout_seconds = 45.5
max_retries = 0
[providers.azure_openai.headers]
"api-version" = "2024-02-01"

[providers.local-llm]
name = "Local LLM Server"
base_url = "http://localhost:11434/v1/"
api_key = "ollama"
models = ["llama2"]
enabled = false

[models.gpt_4]
name = "gpt-4"
strategy = "weighted_failover"
enabled = true

[[models.gpt_4.backends]]
provider = "openai_primary"
model = "gpt-4"
weight = 0.6
priority = 1
enabled = true
billing_mode = "per_token"
tags = ["premium", "stable"]

[[models.gpt_4.backends]]
provider = "azure_openai"
model = "gpt-4"
weight = 100
priority = 10
billing_mode = "per_request"
tags = ["enterprise"]

[models.gpt_3_5_turbo]
name = "gpt-3.5-turbo"
strategy = "smart_ai"

[[models.gpt_3_5_turbo.backends]]
provider = "openai_primary"
model = "gpt-3.5-turbo"

[[models.gpt_3_5_turbo.backends]]
provider = "azure_openai"
model = "gpt-35-turbo"
enabled = false

[models.llama]
name = "llama2"
enabled = false

[[models.llama.backends]]
provider = "local-llm"
model = "llama2"
"""


def test_full_berry_api_style_config_loads_every_option(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    s = config.settings
    assert (s.health_check_interval_seconds, s.request_timeout_seconds, s.max_retries) == (
        45,
        20,
        4,
    )
    assert (s.max_internal_retries, s.health_check_timeout_seconds) == (1, 8)
    assert (s.circuit_breaker_failure_threshold, s.circuit_breaker_timeout_seconds) == (3, 90)
    assert s.recovery_check_interval_seconds == 100
    assert (s.max_request_body_bytes, s.state_store) == (2048, "dynamodb")
    ai = s.smart_ai
    assert (ai.initial_confidence, ai.min_confidence, ai.enable_time_decay) == (0.9, 0.1, False)
    assert (ai.lightweight_check_interval_seconds, ai.exploration_ratio) == (300, 0.1)
    assert ai.non_premium_stability_bonus == 1.3
    assert ai.confidence_adjustments.model_dump() == {
        "success_boost": 0.15,
        "network_error_penalty": 0.35,
        "auth_error_penalty": 0.9,
        "rate_limit_penalty": 0.05,
        "server_error_penalty": 0.25,
        "model_error_penalty": 0.4,
        "timeout_penalty": 0.3,
    }

    assert list(config.providers) == ["openai_primary", "azure_openai", "local-llm"]
    azure = config.providers["azure_openai"]
    assert azure.headers == {"api-version": "2024-02-01"}
    assert (azure.timeout_seconds, azure.max_retries) == (45.5, 0)
    assert azure.api_base == "https://your-resource.openai.azure.com/v1"
    assert config.providers["local-llm"].enabled is False
    assert config.providers["local-llm"].api_base == "http://localhost:11434/v1"

    gpt4 = config.models["gpt_4"]
    assert (gpt4.name, gpt4.strategy) == ("gpt-4", "weighted_failover")
    assert [b.key for b in gpt4.backends] == ["openai_primary:gpt-4", "azure_openai:gpt-4"]
    first, second = gpt4.backends
    assert (first.weight, first.priority, first.tags, first.is_premium) == (
        0.6,
        1,
        ["premium", "stable"],
        True,
    )
    assert (second.weight, second.priority, second.billing_mode) == (100, 10, "per_request")
    assert config.models["gpt_3_5_turbo"].backends[1].enabled is False
    assert config.models["llama"].enabled is False

    user1 = config.users["user1"]
    assert user1.name == "普通用户"
    assert user1.allowed_models == ["gpt-3.5-turbo", "gpt_4"]
    assert user1.tags == ["user", "basic"]
    assert user1.rate_limit is not None
    assert user1.rate_limit.windows() == [(60, 60), (3600, 1000)]
    assert user1.is_admin is False
    assert config.users["admin"].is_admin is True
    locked = config.users["locked"]
    assert (locked.enabled, locked.admin, locked.is_admin) == (False, False, False)
    assert locked.rate_limit is not None and locked.rate_limit.windows() == [(86400, 5000)]

    assert config.warnings() == [
        "models.gpt_4.strategy: 'weighted_failover' is routed with smart_ai (Berry's only strategy)"
    ]


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, env={})
    assert list(config.providers) == ["demo-a", "demo-b"]
    assert {"demo", "demo-large"} <= set(config.models)
    assert list(config.users) == ["admin", "alice"]
    # ${DEMO_API_KEY:-demo-key-a} falls back to its default when the variable is unset.
    assert config.providers["demo-a"].api_key == "demo-key-a"
    assert config.providers["demo-a"].api_base == "http://127.0.0.1:9001/v1"
    assert config.providers["demo-b"].api_base == "http://127.0.0.1:9002/v1"
    assert config.models["demo"].name == "demo-model"
    assert [b.weight for b in config.models["demo"].backends] == [2.0, 1.0]
    assert config.models["demo-large"].backends[0].is_premium is True
    assert config.users["admin"].is_admin is True
    assert config.users["alice"].is_admin is False
    assert config.warnings() == []
    with_key = load_config(EXAMPLE, env={"DEMO_API_KEY": "from-env"})
    assert with_key.providers["demo-a"].api_key == "from-env"


# --------------------------------------------------------------------------- ${VAR}


def test_variable_is_replaced_from_env(tmp_path: Path) -> None:
    text = make(
        replace={
            f'api_key = "{API_KEY}"': 'api_key = "${OPENAI_KEY}"',
            'base_url = "https://api.openai.com/v1"': 'base_url = "https://${HOST}/v1"',
            f'token = "{TOKEN}"': 'token = "berry-${USER_SUFFIX}"',
        },
        provider='headers = { "X-Org" = "org-${ORG}" }',
    )
    env = {
        "OPENAI_KEY": "sk-from-env",
        "HOST": "gw.example.com",
        "USER_SUFFIX": "alice-0123456789",
        "ORG": "42",
    }
    config = load(tmp_path, text, env)
    provider = config.providers["openai"]
    assert provider.api_key == "sk-from-env"
    assert provider.base_url == "https://gw.example.com/v1"
    assert provider.headers == {"X-Org": "org-42"}
    assert config.users["alice"].token == "berry-alice-0123456789"


def test_variable_in_list_and_array_of_tables(tmp_path: Path) -> None:
    text = make(
        replace={
            'models = ["gpt-4o", "gpt-4o-mini"]': 'models = ["${MODEL}"]',
            'model = "gpt-4o"\n# @backend': 'model = "${MODEL}"\n# @backend',
        }
    )
    config = load(tmp_path, text, {"MODEL": "gpt-4o"})
    assert config.providers["openai"].models == ["gpt-4o"]
    assert config.models["gpt4o"].backends[0].model == "gpt-4o"


def test_unset_variable_is_one_problem_naming_key_path_and_variable(tmp_path: Path) -> None:
    text = make(replace={f'api_key = "{API_KEY}"': 'api_key = "${OPENAI_KEY}"'})
    assert problems(tmp_path, text) == [
        "providers.openai.api_key: environment variable OPENAI_KEY is not set"
    ]


def test_unset_variables_are_all_reported_with_list_paths(tmp_path: Path) -> None:
    text = make(
        replace={
            f'api_key = "{API_KEY}"': 'api_key = "${OPENAI_KEY}"',
            'provider = "openai"': 'provider = "${PROVIDER_ID}"',
            'models = ["gpt-4o", "gpt-4o-mini"]': 'models = ["gpt-4o", "${EXTRA_MODEL}"]',
        }
    )
    assert sorted(problems(tmp_path, text)) == [
        "models.gpt4o.backends[0].provider: environment variable PROVIDER_ID is not set",
        "providers.openai.api_key: environment variable OPENAI_KEY is not set",
        "providers.openai.models[1]: environment variable EXTRA_MODEL is not set",
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "sk-default"),
        ({"OPENAI_KEY": ""}, "sk-default"),  # as in shells, empty counts as unset for :-
        ({"OPENAI_KEY": "sk-set"}, "sk-set"),
    ],
)
def test_variable_default(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    text = make(replace={f'api_key = "{API_KEY}"': 'api_key = "${OPENAI_KEY:-sk-default}"'})
    assert load(tmp_path, text, env).providers["openai"].api_key == expected


def test_set_but_empty_variable_is_a_problem(tmp_path: Path) -> None:
    # An empty secret is almost always a deployment mistake; `${VAR:-}` opts in to empty.
    text = make(replace={f'api_key = "{API_KEY}"': 'api_key = "${OPENAI_KEY}"'})
    found = problems(tmp_path, text, {"OPENAI_KEY": ""})
    assert found == ["providers.openai.api_key: environment variable OPENAI_KEY is empty"]
    opted_in = make(replace={f'api_key = "{API_KEY}"': 'api_key = "${OPENAI_KEY:-}"'})
    path = write(tmp_path, opted_in)
    assert load_config(path, {"OPENAI_KEY": ""}).providers["openai"].api_key == ""


def test_empty_api_key_is_allowed_for_keyless_providers(tmp_path: Path) -> None:
    path = write(tmp_path, make(replace={f'api_key = "{API_KEY}"': 'api_key = ""'}))
    assert load_config(path).providers["openai"].api_key == ""


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERRY_TEST_OPENAI_KEY", "sk-from-process-env")
    path = write(
        tmp_path,
        make(replace={f'api_key = "{API_KEY}"': 'api_key = "${BERRY_TEST_OPENAI_KEY}"'}),
    )
    assert load_config(path).providers["openai"].api_key == "sk-from-process-env"
    monkeypatch.delenv("BERRY_TEST_OPENAI_KEY")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "providers.openai.api_key: environment variable BERRY_TEST_OPENAI_KEY is not set"
    ]


def test_interpolation_is_single_pass_and_needs_braces(tmp_path: Path) -> None:
    text = make(
        replace={
            f'api_key = "{API_KEY}"': 'api_key = "${OPENAI_KEY}"',
            '[users.alice]\nname = "Alice"': '[users.alice]\nname = "$NAME costs $5"',
        }
    )
    config = load(tmp_path, text, {"OPENAI_KEY": "sk-${OTHER}", "NAME": "nope"})
    assert config.providers["openai"].api_key == "sk-${OTHER}"
    assert config.users["alice"].name == "$NAME costs $5"


def test_parse_config_interpolates_already_parsed_data() -> None:
    data = {
        "providers": {
            "p": {
                "name": "P",
                "base_url": "https://x.example",
                "api_key": "${K}",
                "models": ["m"],
            }
        }
    }
    original = copy.deepcopy(data)
    config = parse_config(data, "inline", {"K": "sk-k"})
    assert config.providers["p"].api_key == "sk-k"
    assert data == original  # the caller's data is not modified
    with pytest.raises(ConfigError) as info:
        parse_config(data, "inline", {})
    assert info.value.source == "inline"
    assert str(info.value) == "inline: providers.p.api_key: environment variable K is not set"


# --------------------------------------------------------------------------- secrets


def test_secrets_not_in_repr_or_str(tmp_path: Path) -> None:
    config = load(tmp_path, make())
    assert config.providers["openai"].api_key == API_KEY
    assert config.users["alice"].token == TOKEN
    for text in (
        repr(config),
        str(config),
        repr(config.providers["openai"]),
        str(config.providers["openai"]),
        repr(config.users["alice"]),
        repr(config.users),
    ):
        assert "Alice" in text or "OpenAI" in text  # the repr is not empty
        assert_secrets_absent(text)


def test_secrets_not_in_config_errors(tmp_path: Path) -> None:
    text = make(
        # the secret user token is duplicated, the header carries a secret, a typo holds the key
        provider=f'headers = {{ "Authorization" = "Bearer {API_KEY}" }}\napikey = "{API_KEY}"',
        extra=f'[users.bob]\nname = "Bob"\ntoken = "{TOKEN}"\nenabled = "{OTHER_TOKEN}"\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    paths = sorted(line.split(": ", 1)[0] for line in info.value.problems)
    assert paths == ["providers.openai.apikey", "providers.openai.headers", "users.bob.enabled"]
    assert_secrets_absent(str(info.value))
    assert_secrets_absent(repr(info.value))


def test_secret_from_env_not_in_config_errors(tmp_path: Path) -> None:
    text = make(replace={f'token = "{TOKEN}"': 'token = "${ALICE_TOKEN}"'})
    found = problems(tmp_path, text, {"ALICE_TOKEN": "SECRET short"})
    assert len(found) == 1
    assert found[0].startswith("users.alice.token: ")
    assert_secrets_absent(found[0])


def test_secret_not_in_invalid_toml_error(tmp_path: Path) -> None:
    text = make().replace(f'api_key = "{API_KEY}"', f"api_key = {API_KEY}")
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith("invalid TOML: ")
    assert_secrets_absent(found[0])


# --------------------------------------------------------------------------- one problem each

MISTAKES = [
    # (id, make() kwargs, expected key path, reason fragment)
    ("typo-backend", {"backend": "wieght = 5"}, "models.gpt4o.backends[0].wieght", "unknown key"),
    ("typo-settings", {"settings": "max_retrys = 3"}, "settings.max_retrys", "unknown key"),
    (
        "typo-smart-ai",
        {"extra": "[settings.smart_ai]\nexploration = 0.1"},
        "settings.smart_ai.exploration",
        "unknown key",
    ),
    ("typo-section", {"extra": "[setting]\nmax_retries = 3"}, "setting", "unknown key"),
    ("typo-user", {"user": "allowed_model = []"}, "users.alice.allowed_model", "unknown key"),
    (
        "type-int",
        {"settings": 'max_retries = "three"'},
        "settings.max_retries",
        "valid integer",
    ),
    ("type-fraction", {"provider": "max_retries = 2.5"}, "providers.openai.max_retries", "integer"),
    ("type-list", {"user": 'tags = "admin"'}, "users.alice.tags", "valid list"),
    ("type-bool", {"user": 'enabled = "maybe"'}, "users.alice.enabled", "valid boolean"),
    (
        "type-number",
        {"provider": 'timeout_seconds = "slow"'},
        "providers.openai.timeout_seconds",
        "valid number",
    ),
    ("weight-0", {"backend": "weight = 0"}, "models.gpt4o.backends[0].weight", "greater than 0"),
    (
        "weight-negative",
        {"backend": "weight = -1.5"},
        "models.gpt4o.backends[0].weight",
        "greater than 0",
    ),
    (
        "weight-over-100",
        {"backend": "weight = 100.5"},
        "models.gpt4o.backends[0].weight",
        "less than or equal to 100",
    ),
    (
        "priority-11",
        {"backend": "priority = 11"},
        "models.gpt4o.backends[0].priority",
        "less than or equal to 10",
    ),
    (
        "priority-negative",
        {"backend": "priority = -1"},
        "models.gpt4o.backends[0].priority",
        "greater than or equal to 0",
    ),
    (
        "billing-mode",
        {"backend": 'billing_mode = "monthly"'},
        "models.gpt4o.backends[0].billing_mode",
        "'per_token' or 'per_request'",
    ),
    ("strategy", {"model": 'strategy = "fastest"'}, "models.gpt4o.strategy", "'smart_ai'"),
    (
        "backend-type",
        {"provider": 'backend_type = "cohere"'},
        "providers.openai.backend_type",
        "'openai', 'claude', 'gemini' or 'bedrock'",
    ),
    (
        "header-authorization",
        {"provider": 'headers = { Authorization = "Bearer x" }'},
        "providers.openai.headers",
        "header 'Authorization' is set by Berry",
    ),
    (
        "header-authorization-lowercase",
        {"provider": 'headers = { authorization = "Bearer x" }'},
        "providers.openai.headers",
        "header 'authorization' is set by Berry",
    ),
    (
        "header-host",
        {"provider": 'headers = { Host = "evil.example" }'},
        "providers.openai.headers",
        "header 'Host'",
    ),
    (
        "provider-timeout-0",
        {"provider": "timeout_seconds = 0"},
        "providers.openai.timeout_seconds",
        "greater than 0",
    ),
    (
        "circuit-threshold-0",
        {"settings": "circuit_breaker_failure_threshold = 0"},
        "settings.circuit_breaker_failure_threshold",
        "greater than or equal to 1",
    ),
    (
        "state-store",
        {"settings": 'state_store = "redis"'},
        "settings.state_store",
        "'memory' or 'dynamodb'",
    ),
    (
        "body-limit",
        {"settings": "max_request_body_bytes = 10"},
        "settings.max_request_body_bytes",
        "greater than or equal to 1024",
    ),
    (
        "penalty-over-1",
        {"extra": "[settings.smart_ai.confidence_adjustments]\nauth_error_penalty = 1.5"},
        "settings.smart_ai.confidence_adjustments.auth_error_penalty",
        "less than or equal to 1",
    ),
    (
        "min-over-initial",
        {"extra": "[settings.smart_ai]\ninitial_confidence = 0.3\nmin_confidence = 0.5"},
        "settings.smart_ai",
        "min_confidence must not exceed initial_confidence",
    ),
    (
        "rate-limit-0",
        {"user": "rate_limit = { requests_per_minute = 0 }"},
        "users.alice.rate_limit.requests_per_minute",
        "greater than or equal to 1",
    ),
    (
        "rate-limit-typo",
        {"user": "rate_limit = { requests_per_second = 5 }"},
        "users.alice.rate_limit.requests_per_second",
        "unknown key",
    ),
    (
        "backend-unknown-provider",
        {
            "extra": '[[models.gpt4o.backends]]\nprovider = "azure"\nmodel = "gpt-4o"',
        },
        "models.gpt4o.backends[1].provider",
        "unknown provider 'azure'",
    ),
    (
        "backend-model-not-in-provider",
        {"extra": '[[models.gpt4o.backends]]\nprovider = "openai"\nmodel = "gpt-5"'},
        "models.gpt4o.backends[1].model",
        "'gpt-5' is not in providers.openai.models",
    ),
    (
        "backend-listed-twice",
        {"extra": '[[models.gpt4o.backends]]\nprovider = "openai"\nmodel = "gpt-4o"'},
        "models.gpt4o.backends[1]",
        "backend 'openai:gpt-4o' is listed twice",
    ),
    (
        "duplicate-public-name",
        {
            "extra": '[models.gpt4o_copy]\nname = "gpt-4o"\n'
            '[[models.gpt4o_copy.backends]]\nprovider = "openai"\nmodel = "gpt-4o-mini"',
        },
        "models.gpt4o_copy.name",
        "'gpt-4o' is also the name of models.gpt4o",
    ),
    (
        "duplicate-token",
        {"extra": f'[users.bob]\nname = "Bob"\ntoken = "{TOKEN}"'},
        "users.bob.token",
        "same token as users.alice",
    ),
    (
        "model-without-backends",
        {"extra": '[models.empty]\nname = "empty"'},
        "models.empty.backends",
        "required key is missing",
    ),
    (
        "model-with-empty-backends",
        {"extra": '[models.empty]\nname = "empty"\nbackends = []'},
        "models.empty.backends",
        "at least 1 item",
    ),
    (
        "provider-without-models",
        {"extra": '[providers.x]\nname = "X"\nbase_url = "https://x.example"\napi_key = "k"'},
        "providers.x.models",
        "required key is missing",
    ),
]


@pytest.mark.parametrize(
    ("sections", "path", "reason"),
    [pytest.param(m[1], m[2], m[3], id=m[0]) for m in MISTAKES],
)
def test_each_mistake_is_one_problem_with_key_path(
    tmp_path: Path, sections: dict[str, str], path: str, reason: str
) -> None:
    found = problems(tmp_path, make(**sections))
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}: "), found
    assert reason in found[0]


REPLACED_MISTAKES = [
    # (id, old line, new line, expected key path, reason fragment)
    (
        "token-15-chars",
        f'token = "{TOKEN}"',
        'token = "abcdefghijklmno"',
        "users.alice.token",
        "at least 16 characters",
    ),
    (
        "token-inner-space",
        f'token = "{TOKEN}"',
        'token = "abcdefgh ijklmnopq"',
        "users.alice.token",
        "pattern",
    ),
    (
        "token-trailing-newline",
        f'token = "{TOKEN}"',
        'token = "abcdefghijklmnopq\\n"',
        "users.alice.token",
        "pattern",
    ),
    (
        "token-tab",
        f'token = "{TOKEN}"',
        'token = "\\tabcdefghijklmnopq"',
        "users.alice.token",
        "pattern",
    ),
    (
        "token-missing",
        f'token = "{TOKEN}"',
        "",
        "users.alice.token",
        "required key is missing",
    ),
    (
        "token-not-string",
        f'token = "{TOKEN}"',
        "token = 12345678901234567890",
        "users.alice.token",
        "valid string",
    ),
    (
        "base-url-ftp",
        'base_url = "https://api.openai.com/v1"',
        'base_url = "ftp://api.openai.com/v1"',
        "providers.openai.base_url",
        "must be an http:// or https:// URL",
    ),
    (
        "base-url-no-scheme",
        'base_url = "https://api.openai.com/v1"',
        'base_url = "api.openai.com/v1"',
        "providers.openai.base_url",
        "must be an http:// or https:// URL",
    ),
    (
        "base-url-no-host",
        'base_url = "https://api.openai.com/v1"',
        'base_url = "https:///v1"',
        "providers.openai.base_url",
        "with a host",
    ),
    (
        "provider-models-empty",
        'models = ["gpt-4o", "gpt-4o-mini"]',
        "models = []",
        "providers.openai.models",
        "at least 1 item",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "path", "reason"),
    [pytest.param(*m[1:], id=m[0]) for m in REPLACED_MISTAKES],
)
def test_each_replaced_value_mistake_is_one_problem(
    tmp_path: Path, old: str, new: str, path: str, reason: str
) -> None:
    found = problems(tmp_path, make(replace={old: new}))
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}: "), found
    assert reason in found[0]


def test_token_of_exactly_16_chars_and_weight_bounds_are_accepted(tmp_path: Path) -> None:
    text = make(
        replace={f'token = "{TOKEN}"': 'token = "abcdefghijklmnop"'},
        backend="weight = 100\npriority = 10",
    )
    config = load(tmp_path, text)
    assert config.users["alice"].token == "abcdefghijklmnop"
    assert config.models["gpt4o"].backends[0].weight == 100
    assert config.models["gpt4o"].backends[0].priority == 10
    text = make(backend="weight = 0.001\npriority = 0")
    assert load(tmp_path, text).models["gpt4o"].backends[0].weight == 0.001


def test_field_mistakes_are_reported_together(tmp_path: Path) -> None:
    text = make(
        replace={
            f'token = "{TOKEN}"': 'token = "short"',
            'base_url = "https://api.openai.com/v1"': 'base_url = "file:///etc/passwd"',
        },
        settings="max_retrys = 3",
        backend="weight = 0\npriority = 11",
        provider='headers = { Authorization = "x" }',
    )
    found = problems(tmp_path, text)
    paths = sorted(line.split(": ", 1)[0] for line in found)
    assert paths == [
        "models.gpt4o.backends[0].priority",
        "models.gpt4o.backends[0].weight",
        "providers.openai.base_url",
        "providers.openai.headers",
        "settings.max_retrys",
        "users.alice.token",
    ]
    path = tmp_path / "config.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    lines = str(info.value).splitlines()
    assert len(lines) == 6
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_cross_reference_mistakes_are_reported_together(tmp_path: Path) -> None:
    text = make(
        user='allowed_models = ["gpt-5"]',
        extra=(
            '[[models.gpt4o.backends]]\nprovider = "azure"\nmodel = "gpt-4o"\n'
            '[[models.gpt4o.backends]]\nprovider = "openai"\nmodel = "o3"\n'
            '[models.copy]\nname = "gpt-4o"\n'
            '[[models.copy.backends]]\nprovider = "openai"\nmodel = "gpt-4o"\n'
            f'[users.bob]\nname = "Bob"\ntoken = "{TOKEN}"\n'
        ),
    )
    assert problems(tmp_path, text) == [
        "models.gpt4o.backends[1].provider: unknown provider 'azure'",
        "models.gpt4o.backends[2].model: 'o3' is not in providers.openai.models",
        "models.copy.name: 'gpt-4o' is also the name of models.gpt4o",
        "users.bob.token: same token as users.alice",
    ]


def test_unset_variable_reported_together_with_other_problems(tmp_path: Path) -> None:
    text = make(
        replace={f'api_key = "{API_KEY}"': 'api_key = "${OPENAI_KEY}"'},
        backend="wieght = 5",
    )
    found = problems(tmp_path, text)
    assert "providers.openai.api_key: environment variable OPENAI_KEY is not set" in found
    assert "models.gpt4o.backends[0].wieght: unknown key" in found


def test_cross_references_are_checked_once_every_field_is_valid(tmp_path: Path) -> None:
    # Two passes, like a compiler: field problems first, then references between sections.
    text = make(
        settings="max_retrys = 3",
        extra=f'[users.bob]\nname = "Bob"\ntoken = "{TOKEN}"\n',
    )
    assert problems(tmp_path, text) == ["settings.max_retrys: unknown key"]
    fixed = make(extra=f'[users.bob]\nname = "Bob"\ntoken = "{TOKEN}"\n')
    assert problems(tmp_path, fixed) == ["users.bob.token: same token as users.alice"]


def test_base_url_with_whitespace_is_rejected(tmp_path: Path) -> None:
    text = make(
        replace={
            'base_url = "https://api.openai.com/v1"': 'base_url = "https://api.open ai.com/v1"'
        }
    )
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith("providers.openai.base_url: ")


# --------------------------------------------------------------------------- file problems


def test_invalid_toml_is_one_problem_with_line(tmp_path: Path) -> None:
    found = problems(tmp_path, make(settings="max_retries = = 3"))
    assert len(found) == 1
    assert found[0].startswith("invalid TOML: ")
    assert "line 3" in found[0]


def test_duplicate_toml_key_is_invalid_toml(tmp_path: Path) -> None:
    found = problems(tmp_path, make(provider='name = "Again"'))
    assert len(found) == 1
    assert found[0].startswith("invalid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "config.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.source == str(path)
    assert info.value.problems == ["cannot read the file: No such file or directory"]
    assert str(info.value) == f"{path}: cannot read the file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("cannot read the file: ")


def test_non_utf8_file(tmp_path: Path) -> None:
    data = make().encode().replace(b'name = "Alice"', b'name = "Al\xe9ice"')
    assert problems(tmp_path, data) == ["the file is not valid UTF-8"]


# --------------------------------------------------------------------------- api_base


@pytest.mark.parametrize(
    ("base_url", "api_base"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("https://api.openai.com/v1//", "https://api.openai.com/v1"),
        ("https://api.openai.com", "https://api.openai.com/v1"),
        ("https://api.openai.com/", "https://api.openai.com/v1"),
        ("http://127.0.0.1:9002", "http://127.0.0.1:9002/v1"),
        ("http://localhost:11434/v1", "http://localhost:11434/v1"),
        ("https://gw.example.com/openai/v1", "https://gw.example.com/openai/v1"),
        ("https://gw.example.com/openai/", "https://gw.example.com/openai/v1"),
    ],
)
def test_api_base_always_ends_in_v1_once(base_url: str, api_base: str) -> None:
    provider = Provider(name="p", base_url=base_url, api_key="k", models=["m"])
    assert provider.api_base == api_base
    assert provider.base_url == base_url  # the configured value is kept as written


# --------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("strategy", LEGACY_STRATEGIES)
def test_legacy_strategy_loads_with_warning(tmp_path: Path, strategy: str) -> None:
    config = load(tmp_path, make(model=f'strategy = "{strategy}"'))
    assert config.models["gpt4o"].strategy == strategy
    assert config.warnings() == [
        f"models.gpt4o.strategy: '{strategy}' is routed with smart_ai (Berry's only strategy)"
    ]


def test_legacy_strategies_are_berry_apis_seven() -> None:
    assert set(LEGACY_STRATEGIES) == {
        "weighted_random",
        "round_robin",
        "least_latency",
        "failover",
        "random",
        "weighted_failover",
        "smart_weighted_failover",
    }


def test_smart_ai_strategy_has_no_warning(tmp_path: Path) -> None:
    assert load(tmp_path, make(model='strategy = "smart_ai"')).warnings() == []


# --------------------------------------------------------------------------- models directly


def test_user_admin_rule() -> None:
    def user(**kw: object) -> User:
        return User(name="u", token="abcdefghijklmnop", **kw)

    assert user().is_admin is True
    assert user(admin=True).is_admin is True
    assert user(admin=False).is_admin is False
    assert user(allowed_models=["m"]).is_admin is False
    assert user(allowed_models=["m"], admin=True).is_admin is True


def test_models_are_frozen() -> None:
    model = Model(name="m", backends=[Backend(provider="p", model="m")])
    with pytest.raises(ValueError):
        model.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- path resolution


def test_resolve_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFIG_PATH", raising=False)
    assert resolve_config_path() == Path("config.toml")
    assert resolve_config_path("/etc/berry.toml") == Path("/etc/berry.toml")
    monkeypatch.setenv("CONFIG_PATH", "/srv/berry/config.toml")
    assert resolve_config_path() == Path("/srv/berry/config.toml")
    assert resolve_config_path("/etc/berry.toml") == Path("/etc/berry.toml")  # explicit wins
    monkeypatch.setenv("CONFIG_PATH", "")
    assert resolve_config_path() == Path("config.toml")


def test_load_config_without_path_uses_config_path_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, make(), name="elsewhere.toml")
    monkeypatch.setenv("CONFIG_PATH", str(path))
    assert list(load_config(env={}).users) == ["alice"]


def test_load_config_without_path_or_env_reads_cwd_config_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, make())
    monkeypatch.delenv("CONFIG_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert list(load_config(env={}).providers) == ["openai"]


# --------------------------------------------------------------------------- Berry API drop-in


def test_allowed_model_naming_no_model_is_a_warning_not_an_error(tmp_path: Path) -> None:
    """Berry API's own config-example.toml lists models it never defines."""
    config = load(tmp_path, make(user='allowed_models = ["gpt-4o", "claude-3-haiku"]'))
    assert config.warnings() == [
        "users.alice.allowed_models: 'claude-3-haiku' names no model (it grants nothing)"
    ]


@pytest.mark.parametrize("backend_type", ["openai", "claude", "gemini", "bedrock"])
def test_every_backend_type_loads(tmp_path: Path, backend_type: str) -> None:
    base = "https://bedrock-runtime.eu-west-1.amazonaws.com"
    replace = {}
    if backend_type == "bedrock":
        replace['base_url = "https://api.openai.com/v1"'] = f'base_url = "{base}"'
    config = load(tmp_path, make(replace=replace, provider=f'backend_type = "{backend_type}"'))
    assert config.providers["openai"].backend_type == backend_type


def test_bedrock_base_url_is_the_runtime_endpoint_without_a_path(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, make(provider='backend_type = "bedrock"'))
    assert problem.startswith("providers.openai: base_url: a bedrock base_url is the runtime")


def test_berry_api_global_section_loads_and_maps_to_settings(tmp_path: Path) -> None:
    """Berry API's docs/BACKEND_TYPE_CONFIG_EXAMPLE.toml still starts with ``[global]``."""
    text = make(
        replace={
            "[settings]": (
                '[global]\nhost = "0.0.0.0"\nport = 8080\nlog_level = "info"\n'
                "health_check_interval = 45\nrequest_timeout = 25\nmax_retries = 2\n\n[settings]"
            )
        }
    )
    config = load(tmp_path, text)
    assert config.settings.health_check_interval_seconds == 45
    assert config.settings.request_timeout_seconds == 25
    assert config.settings.max_retries == 2
    warnings = config.warnings()
    assert (
        "global.request_timeout: Berry API's [global] key, applied as settings."
        "request_timeout_seconds" in warnings
    )
    assert any(w.startswith("global.port: ignored") for w in warnings)


def test_settings_win_over_the_legacy_global_section(tmp_path: Path) -> None:
    text = make(
        replace={
            "[settings]": (
                "[global]\nrequest_timeout = 25\n\n[settings]\nrequest_timeout_seconds = 12"
            )
        }
    )
    assert load(tmp_path, text).settings.request_timeout_seconds == 12


def test_unknown_key_in_global_is_an_error(tmp_path: Path) -> None:
    text = make(replace={"[settings]": "[global]\nworkers = 4\n\n[settings]"})
    assert problems(tmp_path, text) == ["global.workers: unknown key"]


def test_price_budget_and_token_limits_load(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        make(
            backend="price = { input_per_million = 2.5, output_per_million = 10 }",
            user=(
                "monthly_budget_usd = 50\n"
                "rate_limit = { tokens_per_minute = 10000, tokens_per_day = 500000 }"
            ),
        ),
    )
    price = config.models["gpt4o"].backends[0].price
    assert price is not None and (price.input_per_million, price.output_per_million) == (2.5, 10)
    alice = config.users["alice"]
    assert alice.monthly_budget_usd == 50
    assert alice.rate_limit is not None
    assert alice.rate_limit.token_windows() == [(60, 10000), (86400, 500000)]


def test_hedging_settings_and_a_model_override(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        make(
            settings="[settings.hedging]\nmax_delay_seconds = 8\nmin_delay_seconds = 1",
            model="hedging = { enabled = false }",
        ),
    )
    assert config.settings.hedging.max_delay_seconds == 8
    override = config.models["gpt4o"].hedging
    assert override is not None
    merged = override.apply(config.settings.hedging)
    assert (merged.enabled, merged.max_delay_seconds, merged.min_delay_seconds) == (False, 8, 1)


def test_non_ascii_token_is_rejected(tmp_path: Path) -> None:
    """Headers travel as latin-1: such a token could never match."""
    text = make(replace={f'token = "{TOKEN}"': 'token = "berry-tökén-0123456789"'})
    (problem,) = problems(tmp_path, text)
    assert problem.startswith("users.alice.token: String should match pattern")
    assert "tökén" not in problem
