"""An older Berry to measure beside the current one: a git commit checked out as a worktree.

``git worktree add`` writes the commit's files to a folder of its own (here, under the
benchmark's temporary folder) and touches neither the checkout's index nor its working tree;
the worktree is removed again at the end. The old code runs from its ``src`` on
``PYTHONPATH`` with the current venv's interpreter and packages, so only Berry's code differs.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def worktree(repository: Path, ref: str, folder: Path) -> Iterator[Path]:
    """The worktree's path, for the duration of the block."""
    commit = subprocess.run(
        ["git", "-C", str(repository), "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = folder / f"berry-{commit}"
    subprocess.run(
        ["git", "-C", str(repository), "worktree", "add", "--detach", "--quiet", str(path), commit],
        check=True,
    )
    try:
        yield path
    finally:
        removed = subprocess.run(
            ["git", "-C", str(repository), "worktree", "remove", "--force", str(path)],
            capture_output=True,
            text=True,
        )
        if removed.returncode != 0:
            print(f"git worktree remove {path}: {removed.stderr.strip()}", file=sys.stderr)


def serve_command(
    python: Path, source: Path, config: Path, port: int
) -> tuple[list[str], dict[str, str]]:
    """The command and environment that serve ``config`` from the old ``source`` tree: only
    the options every version of ``berry serve`` has (no --http; the old default port)."""
    env = {"PYTHONPATH": str(source / "src"), "BERRY_STATE_STORE": "memory"}
    # The venv also has the current tree installed (editable): make sure the old one wins.
    loaded = subprocess.run(
        [str(python), "-c", "import berry_handlers, berry_shared; print(berry_shared.__file__)"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(loaded).is_relative_to(source):
        raise RuntimeError(f"the reference run would load {loaded}, not {source}")
    command = [
        str(python),
        "-m",
        "berry_handlers.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--no-probes",
    ]
    return command, env
