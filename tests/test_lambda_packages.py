"""What each Lambda function ships (src/requirements/*.txt, built by src/Makefile): pinned to
what the tests run, enough for what its code imports at cold start, and nothing it does not
import (uvicorn only where the Web Adapter runs it, no aiohttp where nothing calls an upstream,
httpx nowhere). The built artifacts themselves are checked in test_sam_build.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from support import ROOT

SRC = ROOT / "src"
REQUIREMENTS = SRC / "requirements"
# Requirement set -> the modules its functions import first (template.yaml's handlers).
ENTRIES = {
    "api": [
        "berry_handlers.models",
        "berry_handlers.health",
        "berry_handlers.admin",
        "berry_handlers.smart_ai",
        "berry_handlers.fallback",
    ],
    "chat": ["berry_handlers.chat"],
    "stream": ["berry_handlers.chat", "uvicorn"],  # run_stream.sh: python -m uvicorn ...:app
    "probe": ["berry_handlers.probe"],
}


def pins(name: str) -> set[str]:
    return {
        canonicalize_name(line.split("==")[0])
        for line in (REQUIREMENTS / f"{name}.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }


def module_path(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def import_time_imports(module: str) -> set[str]:
    """The modules ``module`` imports when it is imported: its module-level (and class-level)
    statements, not function bodies (lazy imports) nor ``if TYPE_CHECKING:`` blocks."""
    path = module_path(module)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                found.add(base)
                # ``from package import module`` imports the module too.
                found.update(
                    f"{base}.{alias.name}"
                    for alias in node.names
                    if module_path(f"{base}.{alias.name}")
                )
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.ClassDef | ast.With):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    return found


def third_party_imports(entries: list[str]) -> set[str]:
    """Top-level third-party modules imported at cold start from these entry modules."""
    seen: set[str] = set()
    third_party: set[str] = set()
    pending = list(entries)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        top = module.split(".")[0]
        if top in ("berry_handlers", "berry_shared"):
            # A package's __init__ runs before any of its modules.
            parts = module.split(".")
            pending += [".".join(parts[:i]) for i in range(1, len(parts))]
            pending += sorted(import_time_imports(module))
        elif top not in sys.stdlib_module_names and top != "__future__":
            third_party.add(top)
    return third_party


def test_the_locks_pin_what_the_tests_run() -> None:
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS / "lock.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_each_function_ships_what_it_imports_at_cold_start(name: str) -> None:
    distributions = packages_distributions()
    available = pins(name) | pins("aws-sdk")
    missing = {}
    for module in third_party_imports(ENTRIES[name]):
        owners = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not owners & available:
            missing[module] = sorted(owners)
    assert not missing, f"{name}.txt lacks what its code imports: {missing}"


def test_each_function_ships_only_what_it_imports() -> None:
    functions = ("api", "chat", "stream", "probe")
    for name in functions:
        assert "httpx" not in pins(name)  # a test dependency only
        assert not {"boto3", "botocore"} & pins(name)  # the AWS SDK layer's
        assert ("uvicorn" in pins(name)) == (name == "stream")
    assert "aiohttp" not in pins("api")  # nothing there calls an upstream
    assert "fastapi" not in pins("probe")
    assert {"uvloop", "httptools", "watchfiles", "websockets"}.isdisjoint(pins("stream"))
    # The lazily imported pieces: there, but only where they run.
    assert "aiohttp" in pins("chat") & pins("stream") & pins("probe")
    assert "mangum" in pins("api") & pins("chat")
    assert {"boto3", "botocore"} <= pins("aws-sdk")


def test_botocore_keeps_the_models_of_every_service_berry_calls() -> None:
    """The AWS SDK layer drops botocore's other ~440 service models (src/Makefile)."""
    makefile = (SRC / "Makefile").read_text()
    kept = set(makefile.split("BOTOCORE_SERVICES = ")[1].splitlines()[0].split())
    used = {"dynamodb"}  # state/dynamo.py
    used |= {"secretsmanager", "ssm"}  # serverless.load_secrets
    used |= {"xray"}  # the X-Ray SDK's sampler, made with the Tracer
    used |= {"sts", "bedrock-runtime"}  # role credentials; Bedrock backends
    assert used <= kept
