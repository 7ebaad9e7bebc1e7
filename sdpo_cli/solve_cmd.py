"""`sdpo solve PROBLEM.json`: solve one problem locally by test-time SDPO."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "solve",
        help="solve a problem file locally (bundled tiny model on CPU by default)",
        description="Solve one problem by test-time SDPO on this machine. The problem file is "
        "the same JSON that POST /v1/problems accepts (docs/problem-format.md).",
    )
    p.add_argument("problem", help="problem JSON file")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    p.add_argument("--model", help="base model directory (default: the bundled toy model)")
    p.add_argument("--vllm-url", help="a running vLLM server (engine vllm); default: start one")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--checkpoint-dir",
        help="where checkpoints and the adapter go; a directory holding a run resumes it "
        "(default: runs/<problem>-<time>)",
    )
    p.add_argument("--seed", type=int, help="override sdpo.seed")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON result line")
    p.add_argument("--verbose", action="store_true", help="show the libraries' output too")
    p.set_defaults(func=run)


def local_runtime(args: argparse.Namespace) -> Any:
    """The runtime of a local run (`sdpo solve`, `sdpo bench`), from the flags and the
    settings (SDPO_CPU_THREADS, SDPO_VLLM_PYTHON, VLLM_API_KEY); says its CPU threads."""
    from sdpo_core.runtime import load_runtime, use_cpu_threads
    from service.settings import Settings

    settings = Settings.from_env()
    local_vllm = args.engine == "vllm" and not getattr(args, "vllm_url", None)
    threads, why = use_cpu_threads(settings.cpu_threads, beside_vllm=local_vllm)
    print(f"CPU threads: {threads} ({why})", file=sys.stderr)
    return load_runtime(
        args.model,
        engine=args.engine,
        vllm_url=getattr(args, "vllm_url", None),
        device=args.device,
        vllm_python=settings.vllm_python,
        vllm_api_key=settings.vllm_api_key,
    )


def run(args: argparse.Namespace) -> int:
    from sdpo_core.quiet import quiet_libraries

    quiet_libraries(args.verbose)
    from sdpo_core.problem import ProblemError, load_problem

    try:
        problem = load_problem(args.problem)
        if args.seed is not None:
            problem = problem.with_sdpo(seed=args.seed)
    except ProblemError as exc:
        print(f"sdpo solve: {args.problem}: {exc}", file=sys.stderr)
        return 2

    from sdpo_cli.progress import ProgressDisplay
    from sdpo_core.best_adapter import read_best_adapter
    from sdpo_core.objectives import Maximize
    from sdpo_core.solve import latest_adapter_dir, solve

    stem = Path(args.problem).stem
    ckpt = Path(args.checkpoint_dir or f"runs/{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        runtime = local_runtime(args)
    except (OSError, RuntimeError, ValueError) as exc:  # no model, a bad setting, no vLLM ...
        print(f"sdpo solve: {exc}", file=sys.stderr)
        return 2
    try:
        title = f"sdpo solve {args.problem} ({args.engine}, {Path(runtime.model_path).name})"
        with ProgressDisplay(title, max_attempts=problem.budget.max_attempts) as display:
            result = solve(
                problem,
                runtime,
                on_event=lambda e: display.update(e.model_dump()),
                checkpoint_dir=ckpt,
            )
    finally:
        runtime.close()

    adapter = latest_adapter_dir(ckpt)
    maximizing = isinstance(problem.objective, Maximize)
    out = sys.stderr if args.json else sys.stdout
    if result.solved:
        print(
            f"solved at attempt {result.first_pass_attempt} "
            f"({result.attempts} generated, {result.steps} SDPO steps, {result.seconds:.1f} s)",
            file=out,
        )
        print(f"solution:\n{result.solution}", file=out)
    elif maximizing and result.status == "exhausted":  # its normal end: the best is the answer
        print(
            f"ran its budget ({result.attempts} attempts, {result.steps} SDPO steps, "
            f"{result.seconds:.1f} s): best score {result.best_score:.4g} at attempt "
            f"{result.best_attempt}",
            file=out,
        )
        print(f"best attempt:\n{result.best_solution}", file=out)
    else:
        detail = result.error or result.status
        print(
            f"not solved ({detail}) after {result.attempts} attempts, {result.steps} steps, "
            f"best score {result.best_score:.4g}",
            file=out,
        )
        if result.best_attempt is not None:
            print(f"best attempt {result.best_attempt}:\n{result.best_solution}", file=out)
    if adapter is not None:
        print(f"adapter (PEFT): {adapter}", file=out)
    best = read_best_adapter(ckpt)
    best_dir = best[0] if best is not None and best[1]["adapter_version"] else None
    if maximizing and best is not None:
        where = best_dir or "none, the base model sampled it"
        print(f"best attempt's adapter (v{best[1]['adapter_version']}): {where}", file=out)
    if args.json:
        summary = {
            **result.to_dict(),
            "adapter_dir": str(adapter) if adapter else None,
            "best_adapter_dir": str(best_dir) if best_dir else None,
            "checkpoint_dir": str(ckpt),
        }
        print(json.dumps(summary))
    return 0 if result.solved or (maximizing and result.status == "exhausted") else 1
