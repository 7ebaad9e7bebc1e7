"""The `sdpo` command. Subcommands import their part lazily so `sdpo --help` stays fast."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from sdpo_cli import bench_cmd, remote_cmd, solve_cmd
    from service import cli as service_cli

    solve_cmd.register(sub)
    service_cli.register(sub)
    remote_cmd.register(sub)
    bench_cmd.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
