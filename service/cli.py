"""CLI subcommands of the service: `sdpo serve`, `sdpo worker`, `sdpo keys ...`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from service.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve`, `worker` and `keys` to the `sdpo` command."""
    p = sub.add_parser("serve", help="run the API (and, without REDIS_URL, Redis and a worker)")
    p.add_argument("--host", help="bind address (SDPO_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (SDPO_PORT, default 8000)")
    p.add_argument("--data-dir", help="local mode data directory (SDPO_DATA_DIR)")
    p.add_argument("--no-auth", action="store_true", help="no API keys (loopback binds only)")
    p.add_argument("--model", help="local mode: model directory (default: the bundled toy)")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    p.add_argument("--vllm-url")
    p.add_argument("--concurrency", type=_positive, help=_CONCURRENCY_HELP)
    p.add_argument("--verbose", action="store_true", help="log the libraries' output too")
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="solve problems from the queue of one model")
    p.add_argument("--model", help="model directory (default: the bundled toy model)")
    p.add_argument("--model-name", help="queue name (default: `toy` or the directory name)")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    p.add_argument("--vllm-url", help="an OpenAI-compatible vLLM server (engine vllm)")
    p.add_argument("--device", help="torch device, e.g. cuda:0 (default: auto)")
    p.add_argument("--name", help="worker name (default: HOST-PID)")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics from this port up (SDPO_WORKER_METRICS_PORT, default 9410; 0: off)",
    )
    p.add_argument("--concurrency", type=_positive, help=_CONCURRENCY_HELP)
    p.add_argument("--verbose", action="store_true", help="log the libraries' output too")
    p.set_defaults(func=_worker)

    p = sub.add_parser("keys", help="manage API keys (in the Redis at REDIS_URL)")
    ks = p.add_subparsers(dest="keys_command", required=True)
    c = ks.add_parser("create", help="create a key for a tenant; prints it once")
    c.add_argument("--tenant", required=True)
    c.set_defaults(func=_keys_create)
    r = ks.add_parser("revoke", help="revoke a key (by key id or the key itself)")
    r.add_argument("key")
    r.set_defaults(func=_keys_revoke)
    ls = ks.add_parser("list", help="list key ids and tenants")
    ls.set_defaults(func=_keys_list)


def _logging(verbose: bool) -> None:
    """One line per event of ours that matters (the `sdpo` loggers at INFO); the libraries'
    output (warnings, progress bars, their INFO logs) only with --verbose."""
    from sdpo_core.quiet import quiet_libraries

    quiet_libraries(verbose)
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("sdpo").setLevel(logging.DEBUG if verbose else logging.INFO)


_CONCURRENCY_HELP = (
    "problems the worker runs at once on its one model (SDPO_WORKER_CONCURRENCY, default 1; "
    "docs/deploy.md says how to choose)"
)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number from 1 to 256")
    return value


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from service.local import serve

    _logging(args.verbose)
    s = Settings.from_env()
    update: dict = {}
    if args.host:
        update["host"] = args.host
    if args.port:
        update["port"] = args.port
    if args.data_dir:
        update["data_dir"] = Path(args.data_dir)
    if args.no_auth:
        update["api_keys_required"] = False
    if args.concurrency:
        update["worker_concurrency"] = args.concurrency
    s = s.model_copy(update=update)
    try:
        s.check()
    except ValueError as exc:
        print(f"sdpo serve: {exc}", file=sys.stderr)
        return 2
    return serve(s, model_path=args.model, engine=args.engine, vllm_url=args.vllm_url)


def _worker(args: argparse.Namespace) -> int:
    from service.worker import run_worker

    _logging(args.verbose)
    return run_worker(
        Settings.from_env(),
        model_path=args.model,
        engine=args.engine,
        vllm_url=args.vllm_url,
        device=args.device,
        name=args.name,
        model_name=args.model_name,
        metrics_port=args.metrics_port,
        concurrency=args.concurrency,
    )


def _store():
    from service.store import Store, connect

    s = Settings.from_env()
    return Store(connect(s.redis_url or "redis://127.0.0.1:6379/0"), s.key_prefix)


def _keys_create(args: argparse.Namespace) -> int:
    async def go() -> tuple[str, str]:
        store = _store()
        try:
            return await store.create_key(args.tenant)
        finally:
            await store.redis.aclose()

    key_id, key = asyncio.run(go())
    print(f"key id: {key_id}  tenant: {args.tenant}", file=sys.stderr)
    print(key)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    async def go() -> bool:
        store = _store()
        try:
            return await store.revoke_key(args.key)
        finally:
            await store.redis.aclose()

    if asyncio.run(go()):
        print("revoked")
        return 0
    print("no such key", file=sys.stderr)
    return 1


def _keys_list(_args: argparse.Namespace) -> int:
    async def go() -> list[dict[str, str]]:
        store = _store()
        try:
            return await store.list_keys()
        finally:
            await store.redis.aclose()

    for row in asyncio.run(go()):
        print(f"{row['key_id']}\t{row['tenant']}\t{row.get('created_at', '')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m service ...`: the service subcommands without the rest of `sdpo`."""
    parser = argparse.ArgumentParser(prog="sdpo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
