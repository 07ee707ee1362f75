"""Tests for the ``berry check-config`` console script, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_VENV_BERRY = ROOT / ".venv" / "bin" / "berry"
BERRY = str(_VENV_BERRY if _VENV_BERRY.exists() else Path(sys.executable).parent / "berry")
EXAMPLE = ROOT / "local" / "config.example.toml"

API_KEY = "sk-live-SECRET-cli-provider-key-42"
TOKEN = "berry-SECRET-cli-user-token-0042"

GOOD = f"""
[providers.openai]
name = "OpenAI"
base_url = "https://api.openai.com"
api_key = "${{BERRY_CLI_TEST_KEY:-{API_KEY}}}"
models = ["gpt-4o", "gpt-4o-mini"]

[providers.azure]
name = "Azure"
base_url = "https://azure.example.com/v1"
api_key = "sk-azure-key"
models = ["gpt-4o"]

[models.gpt4o]
name = "gpt-4o"

[[models.gpt4o.backends]]
provider = "openai"
model = "gpt-4o"

[[models.gpt4o.backends]]
provider = "azure"
model = "gpt-4o"

[models.mini]
name = "gpt-4o-mini"
strategy = "round_robin"

[[models.mini.backends]]
provider = "openai"
model = "gpt-4o-mini"

[users.alice]
name = "Alice"
token = "{TOKEN}"

[users.bob]
name = "Bob"
token = "berry-bob-token-0123456789"
allowed_models = ["gpt-4o"]

[users.carol]
name = "Carol"
token = "berry-carol-token-0123456789"
enabled = false
"""

BAD = f"""
[settings]
max_retrys = 3

[providers.openai]
name = "OpenAI"
base_url = "https://api.openai.com/v1"
api_key = "{API_KEY}"
models = ["gpt-4o"]
headers = {{ Authorization = "Bearer {API_KEY}" }}

[models.gpt4o]
name = "gpt-4o"

[[models.gpt4o.backends]]
provider = "openai"
model = "gpt-4o"
weight = 0

[users.alice]
name = "Alice"
token = "{TOKEN} with spaces"
"""

BAD_PROBLEMS = [
    "settings.max_retrys: unknown key",
    "providers.openai.headers: header 'Authorization' is set by Berry and cannot be overridden",
    "models.gpt4o.backends[0].weight: Input should be greater than 0",
    "users.alice.token: String should match pattern '^\\S+$'",
]


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "BERRY_CLI_TEST_KEY")
    }
    environ.update(env)
    return subprocess.run(
        [BERRY, "check-config", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text(GOOD, encoding="utf-8")
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD, encoding="utf-8")
    return path


def test_good_file_exits_0_with_summary_and_warning(good: Path, tmp_path: Path) -> None:
    result = run(str(good), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{good}: OK - 2 providers, 2 models, 3 users\n"
    assert result.stderr == (
        "warning: models.mini.strategy: 'round_robin' is routed with smart_ai "
        "(Berry's only strategy)\n"
    )
    assert API_KEY not in result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr


def test_bad_file_exits_1_with_every_problem_and_no_secret(bad: Path, tmp_path: Path) -> None:
    result = run(str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"{bad}: 4 problem(s)"
    assert sorted(line.strip() for line in lines[1:]) == sorted(BAD_PROBLEMS)
    assert all(line.startswith("  ") for line in lines[1:])
    assert "SECRET" not in result.stderr
    assert API_KEY not in result.stderr
    assert TOKEN not in result.stderr


def test_unset_variable_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text(GOOD.replace(f":-{API_KEY}", ""), encoding="utf-8")
    result = run(str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: 1 problem(s)",
        "  providers.openai.api_key: environment variable BERRY_CLI_TEST_KEY is not set",
    ]
    ok = run(str(path), cwd=tmp_path, BERRY_CLI_TEST_KEY="sk-from-env")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"{path}: OK - 2 providers, 2 models, 3 users\n"
    assert "sk-from-env" not in ok.stdout + ok.stderr


def test_config_path_env_is_the_fallback(good: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = run(cwd=elsewhere, CONFIG_PATH=str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{good}: OK - 2 providers, 2 models, 3 users\n"


def test_explicit_path_wins_over_config_path(good: Path, bad: Path, tmp_path: Path) -> None:
    result = run(str(good), cwd=tmp_path, CONFIG_PATH=str(bad))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good}: OK")


def test_cwd_config_toml_is_the_last_fallback(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(GOOD, encoding="utf-8")
    result = run(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config.toml: OK - 2 providers, 2 models, 3 users\n"


def test_missing_file_exits_1(tmp_path: Path) -> None:
    result = run(cwd=tmp_path)  # no argument, no CONFIG_PATH, no ./config.toml
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "config.toml: 1 problem(s)",
        "  cannot read the file: No such file or directory",
    ]


def test_example_config_is_ok(tmp_path: Path) -> None:
    result = run(str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{EXAMPLE}: OK - 2 providers, 2 models, 2 users\n"
    assert result.stderr == ""
