"""Sandbox throughput: executions/s for a batch of attempts x tests, sandboxed vs plain.

"plain" runs the same program with `subprocess.run([python, "-c", code])` (no isolation),
over the same number of parallel workers. Per-run overhead = mean sandboxed run time minus
mean plain run time for a trivial program. Prints the figures and writes
benchmarks/results/verifier_throughput.json.

    .venv/bin/python benchmarks/verifier_throughput.py [--attempts 16] [--tests 8] [--slots 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sdpo_core.verifiers.sandbox import Job, Sandbox, SandboxSettings

PROGRAM = "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))\n"
TRIVIAL = "pass\n"


def plain_run(python: str, code: str, stdin: str, timeout_s: float) -> None:
    subprocess.run(
        [python, "-c", code], input=stdin.encode(), capture_output=True, timeout=timeout_s
    )


def batch(n_attempts: int, n_tests: int) -> list[tuple[str, str]]:
    return [
        (PROGRAM, " ".join(map(str, range(t + 1))))
        for _ in range(n_attempts)
        for t in range(n_tests)
    ]


def bench_plain(python: str, jobs: list[tuple[str, str]], workers: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda j: plain_run(python, j[0], j[1], 10.0), jobs))
    return time.perf_counter() - start


def bench_sandbox(sb: Sandbox, jobs: list[tuple[str, str]]) -> float:
    start = time.perf_counter()
    results = sb.run_many([Job(code=c, stdin=s, timeout_s=10.0) for c, s in jobs])
    elapsed = time.perf_counter() - start
    assert all(r.status == "ok" for r in results), {r.status for r in results}
    return elapsed


def sequential_ms(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attempts", type=int, default=16)
    ap.add_argument("--tests", type=int, default=8)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default="namespaces", choices=["namespaces", "unsafe-local"])
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results/verifier_throughput.json")
    )
    args = ap.parse_args()

    settings = SandboxSettings(mode=args.mode, slots=args.slots)
    python = settings.python
    jobs = batch(args.attempts, args.tests)
    with Sandbox(settings) as sb:
        sb.run_many([Job(code=TRIVIAL, group=i) for i in range(args.slots)])  # warm the slots
        plain_s, sandbox_s = [], []
        for _ in range(args.repeats):  # interleaved, so load from elsewhere hits both alike
            plain_s.append(bench_plain(python, jobs, args.slots))
            sandbox_s.append(bench_sandbox(sb, jobs))
        n = 30
        plain_ms = sequential_ms(lambda: plain_run(python, TRIVIAL, "", 10.0), n)
        sandbox_ms = sequential_ms(lambda: sb.run(Job(code=TRIVIAL)), n)

    plain_eps = len(jobs) / min(plain_s)
    sandbox_eps = len(jobs) / min(sandbox_s)
    figures = {
        "executions": len(jobs),
        "attempts": args.attempts,
        "tests_per_attempt": args.tests,
        "slots": args.slots,
        "mode": args.mode,
        "plain_exec_per_s": round(plain_eps, 1),
        "sandbox_exec_per_s": round(sandbox_eps, 1),
        "sandbox_cost_ratio": round(plain_eps / sandbox_eps, 3),  # < 1: sandbox is faster
        "plain_run_ms": round(plain_ms, 2),
        "sandbox_run_ms": round(sandbox_ms, 2),
        "per_run_overhead_ms": round(sandbox_ms - plain_ms, 2),
        "python": python,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "kernel": platform.release(),
    }
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
