"""Starting and stopping the benchmark's servers: each one a child process on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


def start(
    command: list[str],
    port: int,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``command`` running and listening on ``port``; its output is discarded."""
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
    )
    try:
        wait_for_port(port, process, timeout)
    except BaseException:
        stop([process])
        raise
    return process


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each, then wait; one that will not stop within 30 s is killed."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
