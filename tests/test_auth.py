"""Tests for berry_shared.auth: bearer tokens, model permissions, tag filtering (SPEC section 3)."""

from __future__ import annotations

import tomllib

import pytest

from berry_shared.auth import Caller, Directory
from berry_shared.config import Config, ConfigError, User, parse_config
from berry_shared.errors import AuthenticationFailed, ModelNotFound, PermissionDenied

ROOT_TOKEN = "tok-root-0123456789abcdef"
ALICE_TOKEN = "tok-alice-0123456789abcdef"
BOB_TOKEN = "tok-bob-0123456789abcdefgh"
CAROL_TOKEN = "tok-carol-0123456789abcdef"
DAVE_TOKEN = "tok-dave-0123456789abcdefg"
EVE_TOKEN = "tok-eve-0123456789abcdefgh"
FRANK_TOKEN = "tok-frank-0123456789abcdef"

CONFIG = f"""
[providers.openai]
name = "OpenAI"
base_url = "https://api.openai.com"
api_key = "sk-openai"
models = ["gpt-4o", "gpt-4o-mini"]

[providers.azure]
name = "Azure"
base_url = "https://azure.example.com/v1"
api_key = "sk-azure"
models = ["gpt-4o"]

[providers.teamb]
name = "Team B proxy"
base_url = "https://teamb.example.com"
api_key = "sk-teamb"
models = ["gpt-4o", "gpt-4o-mini"]

[providers.retired]
name = "Retired"
base_url = "https://retired.example.com"
api_key = "sk-retired"
models = ["gpt-4o"]
enabled = false

[models.gpt4o]
name = "gpt-4o"

[[models.gpt4o.backends]]
provider = "openai"
model = "gpt-4o"

[[models.gpt4o.backends]]
provider = "azure"
model = "gpt-4o"
tags = ["team-a", "premium"]

[[models.gpt4o.backends]]
provider = "teamb"
model = "gpt-4o"
tags = ["team-b"]

[[models.gpt4o.backends]]
provider = "retired"
model = "gpt-4o"

[models.mini]
name = "gpt-4o-mini"

[[models.mini.backends]]
provider = "openai"
model = "gpt-4o-mini"
enabled = false

[[models.mini.backends]]
provider = "teamb"
model = "gpt-4o-mini"
tags = ["team-b"]

[models.old]
name = "old-model"
enabled = false

[[models.old.backends]]
provider = "openai"
model = "gpt-4o-mini"

[users.root]
name = "Root"
token = "{ROOT_TOKEN}"

[users.alice]
name = "Alice"
token = "{ALICE_TOKEN}"
allowed_models = ["gpt4o", "old"]
tags = ["team-a"]

[users.bob]
name = "Bob"
token = "{BOB_TOKEN}"
allowed_models = ["gpt-4o-mini"]

[users.carol]
name = "Carol"
token = "{CAROL_TOKEN}"
allowed_models = []
admin = false
tags = ["team-b", "other"]

[users.dave]
name = "Dave"
token = "{DAVE_TOKEN}"
allowed_models = ["mini"]
admin = true

[users.eve]
name = "Eve"
token = "{EVE_TOKEN}"
enabled = false

[users.frank]
name = "Frank"
token = "{FRANK_TOKEN}"
tags = ["nobody-shares-this"]
"""


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(tomllib.loads(CONFIG), "auth-test", env={})


@pytest.fixture(scope="module")
def directory(config: Config) -> Directory:
    return Directory(config)


def caller(directory: Directory, token: str) -> Caller:
    return directory.authenticate(f"Bearer {token}")


def keys(backends: list) -> list[str]:
    return [b.key for b in backends]


# --------------------------------------------------------------------------- authenticate


@pytest.mark.parametrize(
    ("token", "user_id"),
    [(ROOT_TOKEN, "root"), (ALICE_TOKEN, "alice"), (BOB_TOKEN, "bob"), (DAVE_TOKEN, "dave")],
)
def test_valid_token(directory: Directory, token: str, user_id: str) -> None:
    found = directory.authenticate(f"Bearer {token}")
    assert found.user_id == user_id
    assert found.user is directory.config.users[user_id]


@pytest.mark.parametrize(
    "header",
    [
        f"bearer {ALICE_TOKEN}",
        f"BEARER {ALICE_TOKEN}",
        f"  Bearer {ALICE_TOKEN}  ",
        f"Bearer   {ALICE_TOKEN}",
        f"Bearer {ALICE_TOKEN}\r\n",
    ],
)
def test_scheme_case_and_surrounding_whitespace_are_tolerated(
    directory: Directory, header: str
) -> None:
    assert directory.authenticate(header).user_id == "alice"


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header_is_401(directory: Directory, header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        directory.authenticate(header)
    error = info.value
    assert error.status_code == 401
    assert error.code == "invalid_api_key"
    assert "Missing bearer token" in error.message
    assert error.body() == {
        "error": {
            "message": error.message,
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


@pytest.mark.parametrize(
    "header",
    [
        f"Basic {ALICE_TOKEN}",
        f"Token {ALICE_TOKEN}",
        ALICE_TOKEN,
        "Bearer",
        "Bearer ",
        "   ",
        f"Bearer{ALICE_TOKEN}",
    ],
)
def test_wrong_scheme_is_401(directory: Directory, header: str) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        directory.authenticate(header)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert ALICE_TOKEN not in info.value.message


@pytest.mark.parametrize(
    "token",
    [
        "tok-unknown-0123456789abcdef",
        ALICE_TOKEN[:-1],  # a prefix of a real token
        ALICE_TOKEN + "x",  # a real token plus one character
        ALICE_TOKEN.upper(),  # tokens are case-sensitive
        f"{ALICE_TOKEN} {BOB_TOKEN}",
    ],
)
def test_unknown_token_is_401(directory: Directory, token: str) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        directory.authenticate(f"Bearer {token}")
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.message == "Invalid API token."


def test_disabled_user_is_401_token_disabled(directory: Directory) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        directory.authenticate(f"Bearer {EVE_TOKEN}")
    error = info.value
    assert error.status_code == 401
    assert error.code == "token_disabled"
    assert error.body()["error"]["code"] == "token_disabled"
    assert error.body()["error"]["type"] == "authentication_error"
    assert EVE_TOKEN not in error.message


def test_caller_repr_hides_token(directory: Directory) -> None:
    found = caller(directory, ALICE_TOKEN)
    assert "alice" in repr(found)
    assert ALICE_TOKEN not in repr(found)


# --------------------------------------------------------------------------- admin rule


@pytest.mark.parametrize(
    ("token", "is_admin"),
    [
        (ROOT_TOKEN, True),  # empty allowed_models, no admin key
        (DAVE_TOKEN, True),  # admin = true despite a restricted model list
        (CAROL_TOKEN, False),  # empty allowed_models but admin = false
        (ALICE_TOKEN, False),  # non-empty allowed_models, no admin key
        (BOB_TOKEN, False),
        (FRANK_TOKEN, True),
    ],
)
def test_admin_rule(directory: Directory, token: str, is_admin: bool) -> None:
    found = caller(directory, token)
    assert found.is_admin is is_admin
    assert found.user.is_admin is is_admin


# --------------------------------------------------------------------------- models


def test_find_model_by_key_or_public_name_enabled_or_not(directory: Directory) -> None:
    config = directory.config
    assert directory.find_model("gpt-4o") == ("gpt4o", config.models["gpt4o"])
    assert directory.find_model("gpt4o") == ("gpt4o", config.models["gpt4o"])
    assert directory.find_model("gpt-4o-mini") == ("mini", config.models["mini"])
    assert directory.find_model("old-model") == ("old", config.models["old"])
    assert directory.find_model("gpt-5") is None
    assert directory.find_model("") is None
    assert directory.find_model("GPT-4o") is None


def test_model_for_allowed_by_key(directory: Directory) -> None:
    alice = caller(directory, ALICE_TOKEN)
    assert directory.model_for(alice, "gpt-4o")[0] == "gpt4o"
    assert directory.model_for(alice, "gpt4o")[0] == "gpt4o"
    assert directory.may_use(alice, "gpt4o") is True
    assert directory.may_use(alice, "mini") is False


def test_model_for_allowed_by_public_name(directory: Directory) -> None:
    bob = caller(directory, BOB_TOKEN)
    key, model = directory.model_for(bob, "gpt-4o-mini")
    assert (key, model.name) == ("mini", "gpt-4o-mini")
    assert directory.model_for(bob, "mini")[0] == "mini"
    assert directory.may_use(bob, "mini") is True
    assert directory.may_use(bob, "gpt4o") is False


@pytest.mark.parametrize(("token", "name"), [(ALICE_TOKEN, "gpt-4o-mini"), (BOB_TOKEN, "gpt-4o")])
def test_model_not_allowed_is_403(directory: Directory, token: str, name: str) -> None:
    with pytest.raises(PermissionDenied) as info:
        directory.model_for(caller(directory, token), name)
    error = info.value
    assert error.status_code == 403
    assert error.code == "model_not_allowed"
    assert error.param == "model"
    assert name in error.message


def test_empty_allowed_models_means_every_model(directory: Directory) -> None:
    for token in (ROOT_TOKEN, CAROL_TOKEN):
        found = caller(directory, token)
        assert directory.model_for(found, "gpt-4o")[0] == "gpt4o"
        assert directory.model_for(found, "gpt-4o-mini")[0] == "mini"
        assert directory.may_use(found, "old") is True


@pytest.mark.parametrize("name", ["gpt-5", "GPT-4O", "", "../admin"])
def test_unknown_model_is_404(directory: Directory, name: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        directory.model_for(caller(directory, ROOT_TOKEN), name)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


@pytest.mark.parametrize("token", [ROOT_TOKEN, ALICE_TOKEN, BOB_TOKEN])
@pytest.mark.parametrize("name", ["old-model", "old"])
def test_disabled_model_is_404_even_when_allowed(
    directory: Directory, token: str, name: str
) -> None:
    # alice lists "old" in allowed_models, root may use everything: still 404, not 403.
    with pytest.raises(ModelNotFound) as info:
        directory.model_for(caller(directory, token), name)
    assert info.value.status_code == 404


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (ROOT_TOKEN, ["gpt4o", "mini"]),
        (CAROL_TOKEN, ["gpt4o", "mini"]),
        (ALICE_TOKEN, ["gpt4o"]),  # "old" is allowed but disabled
        (BOB_TOKEN, ["mini"]),
        (DAVE_TOKEN, ["mini"]),  # admin = true does not widen allowed_models
    ],
)
def test_models_for_lists_only_allowed_enabled_models(
    directory: Directory, token: str, expected: list[str]
) -> None:
    listed = directory.models_for(caller(directory, token))
    assert [key for key, _ in listed] == expected
    assert all(model is directory.config.models[key] for key, model in listed)


def test_a_public_name_that_is_another_models_key_is_rejected() -> None:
    # allowed_models = ["b"] could mean either model, so the config may not say it.
    with pytest.raises(ConfigError) as caught:
        parse_config(
            tomllib.loads(
                """
[providers.p]
name = "P"
base_url = "https://p.example"
api_key = "k"
models = ["m1", "m2"]
[models.a]
name = "b"
[[models.a.backends]]
provider = "p"
model = "m1"
[models.b]
name = "z"
[[models.b.backends]]
provider = "p"
model = "m2"
"""
            ),
            env={},
        )
    assert caught.value.problems == [
        "models.a.name: 'b' is the key of another model (allowed_models could not tell them apart)"
    ]


# --------------------------------------------------------------------------- backends


ALL_ELIGIBLE = ["openai:gpt-4o", "azure:gpt-4o", "teamb:gpt-4o"]


@pytest.mark.parametrize(
    ("token", "gpt4o", "mini"),
    [
        (ROOT_TOKEN, ALL_ELIGIBLE, ["teamb:gpt-4o-mini"]),  # no tags: every backend
        (BOB_TOKEN, ALL_ELIGIBLE, ["teamb:gpt-4o-mini"]),
        (ALICE_TOKEN, ["openai:gpt-4o", "azure:gpt-4o"], []),  # untagged + team-a
        (CAROL_TOKEN, ["openai:gpt-4o", "teamb:gpt-4o"], ["teamb:gpt-4o-mini"]),  # team-b
        (FRANK_TOKEN, ["openai:gpt-4o"], []),  # untagged only
    ],
)
def test_backends_for_filters_by_tags(
    directory: Directory, token: str, gpt4o: list[str], mini: list[str]
) -> None:
    found = caller(directory, token)
    models = directory.config.models
    assert keys(directory.backends_for(found, models["gpt4o"])) == gpt4o
    assert keys(directory.backends_for(found, models["mini"])) == mini


def test_backends_for_without_caller_sees_every_enabled_backend(directory: Directory) -> None:
    models = directory.config.models
    assert keys(directory.backends_for(None, models["gpt4o"])) == ALL_ELIGIBLE
    assert keys(directory.backends_for(None, models["mini"])) == ["teamb:gpt-4o-mini"]


def test_disabled_backend_and_disabled_provider_are_excluded(directory: Directory) -> None:
    models = directory.config.models
    # models.gpt4o lists retired:gpt-4o (provider disabled); models.mini lists a disabled backend.
    assert [b.key for b in models["gpt4o"].backends][-1] == "retired:gpt-4o"
    assert models["mini"].backends[0].enabled is False
    for token in (ROOT_TOKEN, CAROL_TOKEN):
        found = caller(directory, token)
        assert "retired:gpt-4o" not in keys(directory.backends_for(found, models["gpt4o"]))
        assert "openai:gpt-4o-mini" not in keys(directory.backends_for(found, models["mini"]))


def test_caller_is_plain_data() -> None:
    user = User(name="U", token="abcdefghijklmnop", tags=["x"])
    found = Caller("u", user)
    assert (found.user_id, found.user.tags, found.is_admin) == ("u", ["x"], True)
    with pytest.raises(AttributeError):
        found.user_id = "other"  # type: ignore[misc]
