"""An internal Lambda extension: work after the response, and a last flush at shutdown.

Registered once per process, during the Init phase (at import), and only where Lambda's own
Python runtime runs one of Berry's handlers (``_HANDLER`` names it). Lambda then behaves as
its Extensions API documents:

- Every invocation also sends this thread an ``INVOKE`` event, and the environment is frozen
  only when the runtime *and* every extension have asked for their next event. So the
  thread waits until the handler has returned (Lambda has the response by then), does the
  post-invocation work (flush the state store's deltas, warm up what the first call
  skipped) and only then asks: none of it delays a response.
- With an extension registered, Lambda sends the runtime SIGTERM before it shuts the
  environment down, and waits up to 500 ms for an internal extension's process: time for
  the last flush. (Internal extensions cannot register for ``SHUTDOWN`` themselves.)

The python3.8 to 3.11 runtimes wait for the next event in native code, so a Python signal
handler never runs while the environment is idle (aws-lambda-python-runtime-interface-client
issue 105; python3.12+ waits in a thread). The C-level handler does write the signal number
to ``signal.set_wakeup_fd`` at once, though, so a thread reading that fd does the flush.

The post-invocation and shutdown work runs the runtime's event loop from these threads,
never at the same time as a handler: ``invocation()`` holds the loop for the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any

logger = logging.getLogger("berry.lambda")

LoopWork = Callable[[], Coroutine[Any, Any, None]]
Work = Callable[[], None]

API_VERSION = "2020-01-01"
# How long shutdown work waits for a handler that still holds the loop (an invocation that
# timed out) before it hands its work to that running loop; SIGKILL comes 500 ms after SIGTERM.
SHUTDOWN_LOOP_WAIT_SECONDS = 0.05
# An INVOKE event without a deadline: Lambda's longest timeout.
MAX_INVOCATION_SECONDS = 900.0


class ExtensionError(Exception):
    """The Extensions API refused or failed a call."""


class ExtensionsApi:
    """The two calls of Lambda's Extensions API an internal extension makes (stdlib HTTP, no
    dependency of its own)."""

    def __init__(self, address: str) -> None:
        self.address = address  # host:port, from AWS_LAMBDA_RUNTIME_API
        self.identifier = ""

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], http.client.HTTPResponse]:
        # One connection per call: the next-event request blocks for as long as the
        # environment lives, frozen in between; a kept-alive socket gains nothing.
        connection = http.client.HTTPConnection(self.address, timeout=timeout)
        try:
            connection.request(method, f"/{API_VERSION}/extension/{path}", body, headers)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise ExtensionError(f"{method} {path}: HTTP {response.status} {payload[:200]!r}")
        return (json.loads(payload) if payload else {}), response

    def register(self, name: str, events: list[str]) -> None:
        body = json.dumps({"events": events}).encode()
        headers = {"Lambda-Extension-Name": name, "Content-Type": "application/json"}
        # A bounded wait: this runs inside the Init phase, which Lambda limits to 10 s.
        _, response = self._call("POST", "register", body, headers, timeout=2.0)
        self.identifier = response.headers.get("Lambda-Extension-Identifier", "")
        if not self.identifier:
            raise ExtensionError("register: no Lambda-Extension-Identifier in the answer")

    def next_event(self) -> dict[str, Any]:
        event, _ = self._call(
            "GET", "event/next", None, {"Lambda-Extension-Identifier": self.identifier}
        )
        return event


class LambdaExtension:
    """Post-invocation and shutdown work for the handlers of this runtime process."""

    def __init__(self, api: ExtensionsApi, name: str = "berry") -> None:
        self.api = api
        self.name = name
        self.after_invocation: list[LoopWork] = []
        self.after_first_invocation: list[Work] = []
        self.at_shutdown: list[LoopWork] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Who drives the runtime's event loop: a handler, or this extension between them.
        self._loop_owner = threading.Lock()
        self._finished: dict[str, threading.Event] = {}
        self._finished_lock = threading.Lock()
        self._shutdown_lock = threading.Lock()
        self._invocations = 0

    # -- the handler's side --------------------------------------------------------------

    @contextlib.contextmanager
    def invocation(self, request_id: str) -> Iterator[None]:
        """Around a handler: it owns the event loop until it returns, then it is finished."""
        with self._loop_owner:
            try:
                yield
            finally:
                self._loop = asyncio.get_event_loop()
        self._finish(request_id)

    def _finish(self, request_id: str) -> None:
        self._event_for(request_id).set()

    def _event_for(self, request_id: str) -> threading.Event:
        with self._finished_lock:
            return self._finished.setdefault(request_id, threading.Event())

    # -- start-up ------------------------------------------------------------------------

    def start(self) -> None:
        """Register (Init phase only), then serve events and watch for SIGTERM in threads.
        Must run on the main thread (signal handlers)."""
        self.api.register(self.name, ["INVOKE"])
        self._watch_sigterm()
        threading.Thread(target=self._serve, name="berry-extension", daemon=True).start()

    def _serve(self) -> None:
        # The first next-event request also tells Lambda this extension's Init is done.
        failures = 0
        while True:
            try:
                event = self.api.next_event()
                failures = 0
            except (OSError, ExtensionError, ValueError) as exc:
                failures += 1
                logger.warning("extension: next event failed (%s)", exc)
                time.sleep(min(0.05 * failures, 1.0))
                continue
            if event.get("eventType") == "INVOKE":
                self._after(event)

    def _after(self, event: dict[str, Any]) -> None:
        request_id = str(event.get("requestId", ""))
        deadline = float(event.get("deadlineMs") or 0) / 1000
        left = deadline - time.time() if deadline else MAX_INVOCATION_SECONDS
        # The handler cannot outlive its deadline: past it, the environment is being reset.
        self._event_for(request_id).wait(max(left, 0) + 1.0)
        with self._finished_lock:
            self._finished.pop(request_id, None)
        self._invocations += 1
        if self._invocations == 1:
            for work in self.after_first_invocation:
                self._safely(work)
        for loop_work in self.after_invocation:
            self._safely(functools.partial(self.run_on_loop, loop_work))

    @staticmethod
    def _safely(work: Work) -> None:
        # Nothing may stop this thread: Lambda would wait for its next-event request forever.
        try:
            work()
        except Exception:
            logger.exception("extension: post-invocation work failed")

    def run_on_loop(self, work: LoopWork, at_shutdown: bool = False) -> None:
        """Run ``work`` on the runtime's event loop, from this thread. Between invocations
        the loop is idle and this thread drives it. At shutdown a handler may still hold it
        (an invocation that timed out): then the work goes to that running loop. No time
        limit: at shutdown, Lambda's SIGKILL is the limit."""
        loop = self._loop
        if loop is None:  # no invocation yet: nothing was recorded, nothing to flush
            return
        if self._loop_owner.acquire(timeout=SHUTDOWN_LOOP_WAIT_SECONDS if at_shutdown else -1):
            try:
                loop.run_until_complete(work())
            finally:
                self._loop_owner.release()
        elif loop.is_running():
            asyncio.run_coroutine_threadsafe(work(), loop).result()

    # -- shutdown ------------------------------------------------------------------------

    def _watch_sigterm(self) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        # Installing a Python-level handler is what makes CPython's C handler write to the
        # wakeup fd; the Python part does nothing (on python3.12+ runtimes it would run on the
        # main thread, perhaps inside a handler that holds the loop): the watcher acts.
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

        def watch() -> None:
            while True:
                if signal.SIGTERM in os.read(read_end, 64):
                    self.shut_down()

        threading.Thread(target=watch, name="berry-sigterm", daemon=True).start()

    def shut_down(self) -> None:
        """Flush, then end the process (Lambda would SIGKILL it 500 ms after SIGTERM)."""
        with self._shutdown_lock:  # a second SIGTERM waits for the first, then exits too
            for work in self.at_shutdown:
                try:
                    self.run_on_loop(work, at_shutdown=True)
                except Exception:
                    logger.exception("extension: shutdown work failed")
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(0)


_extension: list[LambdaExtension | None] = []


def runtime_extension(environ: Mapping[str, str] | None = None) -> LambdaExtension | None:
    """This process's extension: registered on the first call, if this process is Lambda's
    Python runtime running a Berry handler (not, e.g., uvicorn under Lambda Web Adapter,
    whose runtime client is the adapter). ``None`` elsewhere, or if Lambda refused it."""
    if _extension:
        return _extension[0]
    env = os.environ if environ is None else environ
    address = env.get("AWS_LAMBDA_RUNTIME_API", "")
    handler = env.get("_HANDLER", "")
    extension = None
    if address and handler.startswith("berry_handlers.") and "AWS_LAMBDA_EXEC_WRAPPER" not in env:
        extension = LambdaExtension(ExtensionsApi(address))
        try:
            extension.start()
        except (OSError, ExtensionError, ValueError) as exc:
            logger.warning("extension not registered (%s): flushing inside invocations", exc)
            extension = None
    _extension.append(extension)
    return extension
