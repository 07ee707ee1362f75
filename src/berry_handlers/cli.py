"""``berry``: ``serve`` runs every route in one uvicorn process; ``check-config`` validates;
``usage`` prints what each user used, from the state store."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berry_shared.config import Config, ConfigError, load_config, resolve_config_path

if TYPE_CHECKING:
    from berry_shared.gateway import Gateway

    from .server import Parser

# Berry API's address, which its usage guide's examples assume (http://localhost:3000).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000


def _load(path: Path, heading: str = "{path}: {count} problem(s)") -> Config | None:
    """The config at ``path``, or None after printing every problem under ``heading``."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(heading.format(path=path, count=len(exc.problems)), file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    config = _load(path)
    if config is None:
        return 1
    for warning in [*config.warnings(), *_environment_warnings(config)]:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{path}: OK - {len(config.providers)} providers, {len(config.models)} models, "
        f"{len(config.users)} users"
    )
    return 0


def _address(args: argparse.Namespace) -> tuple[str, int]:
    """Berry API's default 127.0.0.1:3000 and its ``BIND_ADDRESS``; ``--host``/``--port`` win."""
    from .server import parse_bind_address

    host, port = DEFAULT_HOST, DEFAULT_PORT
    bind = os.environ.get("BIND_ADDRESS", "").strip()
    if bind:
        host, port = parse_bind_address(bind)
    return (args.host if args.host is not None else host), (
        args.port if args.port is not None else port
    )


def _environment_warnings(config: Config) -> list[str]:
    """What depends on where Berry runs: a SigV4 Bedrock provider needs a region, from its
    base_url or AWS_REGION (set by Lambda itself, so only a warning here)."""
    from berry_shared.dialects.bedrock_signer import bedrock_region  # no botocore import

    notes = []
    for pid, provider in config.providers.items():
        if provider.backend_type == "bedrock" and not provider.api_key:
            try:
                bedrock_region(provider.base_url)
            except ValueError as exc:
                notes.append(f"providers.{pid}: {exc}")
    return notes


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from berry_shared.gateway import Gateway

    from .local import create_app
    from .server import (
        BerryServer,
        ClientLimits,
        enable_access_log,
        protocol_class,
        shutdown_grace,
        tune_garbage_collection,
    )

    try:
        host, port = _address(args)
    except ValueError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    path = resolve_config_path(args.config)
    config = _load(path, "cannot start: {path} has {count} problem(s)")
    if config is None:
        return 1
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        gateway = Gateway(config)
    except ValueError as exc:  # e.g. an unknown BERRY_STATE_STORE
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    app = create_app(gateway, background_probes=not args.no_probes)
    settings = config.settings
    limits = ClientLimits(
        max_header_bytes=settings.max_request_header_bytes,
        read_timeout_seconds=settings.client_read_timeout_seconds,
    )
    parser = args.http if args.http != "auto" else _fastest_parser()
    try:
        protocol = protocol_class(parser, limits)
    except ValueError as exc:  # e.g. --http httptools without httptools installed
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    server_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # Production defaults: no per-request access log; the fast loop if present.
        access_log=args.access_log,
        log_level=args.log_level,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=protocol,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_graceful_shutdown=args.graceful_timeout,
        server_header=False,
    )
    if args.access_log:
        enable_access_log()
    grace = shutdown_grace(args.graceful_timeout)
    server = BerryServer(server_config, on_stop=lambda: gateway.begin_shutdown(grace))
    # uvicorn shuts down gracefully on SIGTERM or SIGINT, then re-raises the signal to the
    # handler it found: make that a clean exit, so a drained shutdown exits 0, as supervisors
    # expect.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: sys.exit(0))
    shown = f"[{host}]" if ":" in host else host
    print(f"Berry serving {path} on http://{shown}:{port}", file=sys.stderr)
    tune_garbage_collection()
    try:
        server.run()
    except SystemExit:
        if server.started:  # the clean exit after a stop signal
            raise
    if not server.started:  # e.g. the port is taken: uvicorn logged why
        print(
            f"cannot start: Berry could not listen on {shown}:{port} (see above)", file=sys.stderr
        )
        return 1
    return 0


def _fastest_parser() -> Parser:
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def _usage(args: argparse.Namespace) -> int:
    from berry_shared.gateway import Gateway

    path = resolve_config_path(args.config)
    config = _load(path)
    if config is None:
        return 1
    if args.user is not None and args.user not in config.users:
        print(f"unknown user {args.user!r} (a [users.<id>] of {path})", file=sys.stderr)
        return 1
    if not 1 <= args.days <= 400:
        print("--days must be between 1 and 400", file=sys.stderr)
        return 1
    try:
        gateway = Gateway(config)
    except ValueError as exc:  # e.g. an unknown BERRY_STATE_STORE
        print(f"cannot read usage: {exc}", file=sys.stderr)
        return 1
    if gateway.store.kind == "memory":
        print(
            "note: the memory store keeps usage per process; this command sees none. For a "
            "deployment's usage set BERRY_STATE_STORE=dynamodb (and BERRY_STATE_TABLE).",
            file=sys.stderr,
        )
    print(format_usage(asyncio.run(_read_usage(gateway, args.user, args.days))))
    return 0


async def _read_usage(gateway: Gateway, user: str | None, days: int) -> dict[str, Any]:
    from berry_shared import reports

    try:
        await gateway.store.start()
        return await reports.usage(gateway, user, days)
    finally:
        await gateway.close()


def format_usage(report: dict[str, Any]) -> str:
    """``/admin/usage``'s document as a table, one line per user and model, then totals."""
    header = ("user", "model", "requests", "prompt", "completion", "cached", "cost USD")
    rows = []
    for user_id, user in report["users"].items():
        for model, counts in user["models"].items():
            rows.append((user_id, model, *_figures(counts)))
        rows.append((user_id, "(all)", *_figures(user)))
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    lines = [f"usage {report['from']} to {report['to']} (UTC)"]
    for row in (header, *rows):
        cells = [
            str(cell).ljust(w) if i < 2 else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _figures(counts: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(counts["requests"]),
        str(counts["prompt_tokens"]),
        str(counts["completion_tokens"]),
        str(counts["cached_tokens"]),
        f"{counts['cost_usd']:.6f}",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berry", description="Berry, an OpenAI-compatible LLM gateway"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run every route in one local uvicorn process")
    serve.add_argument("--config", help="config file (default: $CONFIG_PATH, else ./config.toml)")
    serve.add_argument(
        "--host", help=f"address to listen on (default: from $BIND_ADDRESS, else {DEFAULT_HOST})"
    )
    serve.add_argument(
        "--port",
        type=int,
        help=f"port to listen on (default: from $BIND_ADDRESS, else {DEFAULT_PORT})",
    )
    serve.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    serve.add_argument(
        "--access-log", action="store_true", help="log every request (off by default)"
    )
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish on shutdown",
    )
    serve.add_argument(
        "--http",
        default="auto",
        choices=["auto", "h11", "httptools"],
        help="HTTP/1.1 parser (default: httptools if installed, else h11)",
    )
    serve.add_argument(
        "--no-probes", action="store_true", help="do not probe backends in the background"
    )
    serve.set_defaults(run=_serve)
    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument(
        "config", nargs="?", help="config file (default: $CONFIG_PATH, else ./config.toml)"
    )
    check.set_defaults(run=_check_config)
    usage = commands.add_parser(
        "usage", help="print usage per user and model from the state store (DynamoDB: shared)"
    )
    usage.add_argument("--config", help="config file (default: $CONFIG_PATH, else ./config.toml)")
    usage.add_argument("--days", type=int, default=1, help="UTC days up to today (default 1)")
    usage.add_argument("--user", help="one user's config id")
    usage.set_defaults(run=_usage)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
