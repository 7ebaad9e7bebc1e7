"""Remote mode: `sdpo submit | status | events | cancel | adapter` against a running service.

The server comes from `--server`, else $SDPO_SERVER, else `server` in the config file, else
http://127.0.0.1:8000. The API key comes from $SDPO_API_KEY, else `api_key` in the config
file, else (for a loopback server only) the key `sdpo serve` saved in $SDPO_DATA_DIR/api-key
(default ./sdpo-data/api-key). The config file is $SDPO_CONFIG, else
$XDG_CONFIG_HOME/sdpo/config.toml (default ~/.config/sdpo/config.toml):

    server = "https://sdpo.example.com"
    api_key = "sdpo_..."

Exit status: 0 on success (`submit --follow`: solved), 1 when a followed problem ends
unsolved or a cancel finds it already finished, 2 on any other error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_SERVER = "http://127.0.0.1:8000"


def config_path() -> Path:
    """Where the config file is looked for."""
    if os.environ.get("SDPO_CONFIG"):
        return Path(os.environ["SDPO_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sdpo" / "config.toml"


def read_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"sdpo: {path}: invalid TOML: {exc}") from None


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in {"localhost", "::1"} or host.startswith("127.")


def resolve(server: str | None) -> tuple[str, str | None]:
    """(server URL, API key) from the flag, the environment and the config file."""
    cfg = read_config()
    url = server or os.environ.get("SDPO_SERVER") or cfg.get("server") or DEFAULT_SERVER
    key = os.environ.get("SDPO_API_KEY") or cfg.get("api_key")
    if not key and _loopback(url):
        local = Path(os.environ.get("SDPO_DATA_DIR") or "sdpo-data") / "api-key"
        if local.is_file():
            key = local.read_text().strip() or None
    return str(url).rstrip("/"), key


def register(sub: argparse._SubParsersAction) -> None:
    """Add the remote subcommands to `sdpo`."""

    def add(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_ + ". " + _KEY_HELP)
        p.add_argument("--server", help="service URL (default: $SDPO_SERVER, config, localhost)")
        p.set_defaults(func=func)
        return p

    p = add("submit", "submit a problem file to a service", _submit)
    p.add_argument("problem", help="problem JSON file (the format `sdpo solve` reads)")
    p.add_argument("--follow", "-f", action="store_true", help="show live progress until done")
    p.add_argument("--idempotency-key", help="makes a retried submit return the same problem")
    p.add_argument("--json", action="store_true", help="print the problem as JSON on stdout")

    p = add("status", "show a problem's status", _status)
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="print the problem as JSON")

    p = add("events", "print a problem's events as JSON lines until it finishes", _events)
    p.add_argument("id")
    p.add_argument("--after", help="start after this event id")

    p = add("cancel", "cancel a problem", _cancel)
    p.add_argument("id")

    p = add("adapter", "download a problem's LoRA adapter", _adapter)
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True, help="directory to extract into")
    p.add_argument(
        "--best",
        action="store_true",
        help="the adapter version that sampled the best attempt (with best.json), not the latest",
    )


_KEY_HELP = (
    "The API key comes from $SDPO_API_KEY or `api_key` in ~/.config/sdpo/config.toml "
    "($SDPO_CONFIG overrides the path)"
)


def make_client(args: argparse.Namespace):  # -> sdpo_client.Client
    from sdpo_client import Client

    url, key = resolve(args.server)
    return Client(url, key)


def _run(args: argparse.Namespace, body: Any) -> int:
    """Run `body(client)`, turning SDK errors into a message and exit status 2."""
    from sdpo_client import AuthenticationError, SdpoError

    try:
        with make_client(args) as client:
            return int(body(client) or 0)
    except AuthenticationError as exc:
        print(f"sdpo {args.command}: {exc.message}. {_KEY_HELP}.", file=sys.stderr)
    except SdpoError as exc:
        print(f"sdpo {args.command}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2


def _summary(p: Any) -> str:
    budget = p.spec.budget.max_attempts
    best = "-" if p.best_score is None else f"{p.best_score:.2f}"
    lines = [
        f"{p.id}  {p.status}  model {p.model}",
        f"attempts {p.attempts}/{budget}  steps {p.steps}  best {best}  "
        f"adapter v{p.adapter_version}",
    ]
    if p.status == "solved":
        lines.append(f"solved at attempt {p.solved_attempt}:\n{p.solution}")
    if p.exhausted_reason:
        lines.append(f"exhausted: {p.exhausted_reason}")
    if p.error:
        lines.append(f"error: {p.error}")
    return "\n".join(lines)


def _submit(args: argparse.Namespace) -> int:
    from sdpo_client import problems

    try:
        spec = problems.load(args.problem)
    except (OSError, ValueError) as exc:
        print(f"sdpo submit: {args.problem}: {exc}", file=sys.stderr)
        return 2

    def body(client: Any) -> int:
        p = client.submit(spec, idempotency_key=args.idempotency_key)
        print(f"submitted {p.id} ({p.status}) to {client.base_url}", file=sys.stderr)
        if not args.follow:
            print(p.model_dump_json() if args.json else p.id)
            return 0
        from sdpo_cli.progress import ProgressDisplay

        title = f"sdpo submit {args.problem} -> {p.id}"
        with ProgressDisplay(title, max_attempts=p.spec.budget.max_attempts) as display:
            for event in client.events(p.id):
                display.update(event.to_dict())
        final = client.get(p.id)
        if args.json:
            print(final.model_dump_json())
        else:
            print(_summary(final))
        return 0 if final.status == "solved" else 1

    return _run(args, body)


def _status(args: argparse.Namespace) -> int:
    def body(client: Any) -> int:
        p = client.get(args.id)
        print(p.model_dump_json(indent=2) if args.json else _summary(p))
        return 0

    return _run(args, body)


def _events(args: argparse.Namespace) -> int:
    def body(client: Any) -> int:
        for event in client.events(args.id, after=args.after):
            print(json.dumps(event.to_dict()), flush=True)
        return 0

    return _run(args, body)


def _cancel(args: argparse.Namespace) -> int:
    from sdpo_client import ConflictError

    def body(client: Any) -> int:
        try:
            p = client.cancel(args.id)
        except ConflictError as exc:
            print(f"sdpo cancel: {exc.message}", file=sys.stderr)
            return 1
        what = "cancel requested (stops within one step)" if p.status == "running" else p.status
        print(f"{p.id}: {what}")
        return 0

    return _run(args, body)


def _adapter(args: argparse.Namespace) -> int:
    def body(client: Any) -> int:
        which = "best" if args.best else "latest"
        print(client.download_adapter(args.id, args.output, which=which))
        return 0

    return _run(args, body)
