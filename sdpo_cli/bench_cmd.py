"""`sdpo bench FILE`: run a suite of problems with several methods and seeds, on this machine
(like `sdpo solve`) or on a service (`--server`), and write the discovery report.

FILE holds one problem per line (JSONL): problem objects (`--format problems`, the JSON
`sdpo solve` reads), or LiveCodeBench / HumanEval records, converted as the SDK converts them.
Writes OUT/report.json (the suite report: per-method discovery@k, mean attempts with unsolved
runs at the budget, each baseline's ratio to SDPO, a per-problem table, every run) and
OUT/discovery.png (the discovery@k curves). Exit status: 0 when the suite finished, 2 on bad
input or an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

FORMATS = ("problems", "livecodebench", "humaneval")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run problems with several methods and seeds; report discovery@k",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="JSONL: one problem (or benchmark record) per line")
    p.add_argument("--format", choices=FORMATS, default="problems")
    p.add_argument("--methods", default="sdpo,best_of_k,multi_turn", help="comma-separated")
    p.add_argument("--seeds", type=int, default=1, help="runs of each (problem, method)")
    p.add_argument("--out", help="output directory (default: bench-<file>-<time>)")
    p.add_argument("--name", help="the suite's name")
    p.add_argument("--server", help="run on this service instead of locally")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="local runs")
    p.add_argument("--model", help="local runs: base model directory (default: bundled)")
    p.add_argument("--device", help="local runs: cpu, cuda, ...")
    p.add_argument("--verbose", action="store_true", help="show the libraries' output too")
    p.set_defaults(func=run)


def read_problems(path: str, fmt: str) -> list[Any]:
    """The file's problems as typed specs; a bad line raises ValueError naming the line and
    the field (nothing runs unless every line is valid)."""
    from sdpo_core.problem import ProblemError, parse_problem
    from sdpo_core.verifiers import converters

    convert = {
        "problems": lambda r: r,
        "livecodebench": converters.livecodebench_problem,
        "humaneval": converters.humaneval_problem,
    }[fmt]
    specs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                specs.append(parse_problem(convert(json.loads(line))))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON: {exc.msg}") from None
            except ProblemError as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{n}: not a {fmt} record: {exc!r}") from None
    if not specs:
        raise ValueError(f"{path}: no problems")
    return specs


def run(args: argparse.Namespace) -> int:
    from sdpo_core.quiet import quiet_libraries

    quiet_libraries(args.verbose)
    from sdpo_core.contract import METHODS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        print(f"sdpo bench: --methods: each of {list(METHODS)} at most once", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print("sdpo bench: --seeds: at least 1", file=sys.stderr)
        return 2
    try:
        specs = read_problems(args.file, args.format)
    except (OSError, ValueError) as exc:
        print(f"sdpo bench: {exc}", file=sys.stderr)
        return 2
    stem = Path(args.file).stem
    out = Path(args.out or f"bench-{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    if args.server:
        report = _remote(args, specs, methods)
    else:
        report = _local(args, specs, methods, out)
    if report is None:
        return 2
    (out / "report.json").write_text(report.model_dump_json(indent=1) + "\n")
    print(format_report(report))
    print(f"report: {out / 'report.json'}")
    png = plot_report(report, out / "discovery.png")
    print(f"curves: {png}" if png else "curves: not drawn (pip install matplotlib)")
    return 0


def _local(args: argparse.Namespace, specs: list[Any], methods: list[str], out: Path) -> Any:
    from sdpo_cli.progress import ProgressDisplay
    from sdpo_cli.solve_cmd import local_runtime
    from sdpo_core.contract import SuiteRun
    from sdpo_core.discovery_stats import suite_report, suite_runs
    from sdpo_core.solve import solve

    try:
        runtime = local_runtime(args)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"sdpo bench: {exc}", file=sys.stderr)
        return None
    planned = suite_runs(specs, methods, args.seeds)  # type: ignore[arg-type]
    runs: list[SuiteRun] = []
    try:
        for n, (spec, place) in enumerate(planned, start=1):
            name = f"p{place['problem']}-{place['method']}-s{place['seed']}"
            title = f"[{n}/{len(planned)}] problem {place['problem']} {place['method']} "
            title += f"seed {place['seed']}"
            with ProgressDisplay(title, max_attempts=spec.budget.max_attempts) as display:
                result = solve(
                    spec,
                    runtime,
                    on_event=lambda e, d=display: d.update(e.model_dump()),
                    checkpoint_dir=out / "runs" / name,
                )
            status = "failed" if result.status == "stopped" else result.status
            runs.append(
                SuiteRun(
                    **place,
                    problem_id=name,
                    status=status,
                    attempts=result.attempts,
                    solved_attempt=result.first_pass_attempt,
                )
            )
    finally:
        runtime.close()
    return suite_report(
        runs,
        id=f"local-{out.name}",
        name=args.name,
        model=Path(runtime.model_path).name,
        methods=methods,
        seeds=args.seeds,
        problems=len(specs),
    )


def _remote(args: argparse.Namespace, specs: list[Any], methods: list[str]) -> Any:
    from rich.console import Console
    from sdpo_client import SdpoError

    from sdpo_cli.remote_cmd import make_client

    console = Console(file=sys.stderr)
    try:
        with make_client(args) as client:
            suite = client.submit_suite(
                [s.model_dump(mode="json") for s in specs],
                methods=methods,
                seeds=args.seeds,
                name=args.name,
            )
            console.print(f"submitted suite {suite.id}: {suite.total} runs to {client.base_url}")
            last = -1
            while not suite.finished:
                if suite.done != last:
                    console.print(f"{suite.done}/{suite.total} runs finished")
                    last = suite.done
                time.sleep(2.0)
                suite = client.get_suite(suite.id)
            return suite
    except SdpoError as exc:
        print(f"sdpo bench: {exc}", file=sys.stderr)
        return None


def format_report(report: Any) -> str:
    lines = [f"suite {report.id}: {report.problems} problems x {report.seeds} seeds"]
    lines.append(f"{'method':>10} {'solved':>9} {'mean attempts':>14} {'ratio to sdpo':>14}")
    for method, s in report.summary.items():
        mean = "-" if s.mean_attempts is None else f"{s.mean_attempts:.1f}"
        ratio = "-" if s.ratio_to_sdpo is None else f"{s.ratio_to_sdpo:.2f}"
        lines.append(f"{method:>10} {f'{s.solved}/{s.runs}':>9} {mean:>14} {ratio:>14}")
    return "\n".join(lines)


def plot_report(report: Any, path: Path) -> Path | None:
    """discovery@k of each method as step curves over every attempt count; None without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    budget = max(r.budget for r in report.runs)
    xs = list(range(1, budget + 1))
    for method, s in report.summary.items():
        found = [r.solved_attempt for r in report.runs if r.method == method]
        ys = [sum(f is not None and f <= x for f in found) / len(found) for x in xs]
        mean = "-" if s.mean_attempts is None else f"{s.mean_attempts:.0f}"
        ax.step(xs, ys, where="post", label=f"{method}: mean {mean}, {s.solved}/{s.runs} solved")
    ax.set_xscale("log")
    ax.set_xlabel("attempts k")
    ax.set_ylabel("discovery@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{report.name or report.id}: {report.problems} problems x {report.seeds} seeds")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
