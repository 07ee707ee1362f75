"""``berry``: ``serve`` runs every route in one uvicorn process; ``check-config`` validates."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys

from berry_shared.config import ConfigError, load_config, resolve_config_path


def _check_config(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for warning in config.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{path}: OK - {len(config.providers)} providers, {len(config.models)} models, "
        f"{len(config.users)} users"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from berry_shared.gateway import Gateway

    from .local import create_app

    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"cannot start: {path} has {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
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
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler it found:
    # make that handler a clean exit, so a drained shutdown exits 0, as supervisors expect.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"Berry serving {path} on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        # Production defaults: no per-request access log; the fast loop and parser if present.
        access_log=args.access_log,
        log_level=args.log_level,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        timeout_graceful_shutdown=args.graceful_timeout,
        server_header=False,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berry", description="Berry, an OpenAI-compatible LLM gateway"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run every route in one local uvicorn process")
    serve.add_argument("--config", help="config file (default: $CONFIG_PATH, else ./config.toml)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
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
        "--no-probes", action="store_true", help="do not probe backends in the background"
    )
    serve.set_defaults(run=_serve)
    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument(
        "config", nargs="?", help="config file (default: $CONFIG_PATH, else ./config.toml)"
    )
    check.set_defaults(run=_check_config)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
