"""Verifier speed against LiveCodeBench's own grader, on the same programs in the same run.

For each small LiveCodeBench-style problem (stdin and call-based, `--tests` tests each):
- lcb: `livecodebench.evaluation.testing_util.run_test` (nvidia-livecodebench), called once
  in a freshly forked process as LiveCodeBench's `check_correctness` does (run_test disables
  os functions, so a process serves one call); the time of the call itself ("bare"), / tests;
- verifier: `build_verifier(spec).verify(response)` / tests, the default: all tests of the
  attempt in one fresh sandboxed process (forked from a slot's warm server), as LiveCodeBench
  runs them in its one process, values compared by the verifier;
- verifier_isolated: the same with `"isolation": "test"` (a fresh sandboxed process per test).
Per-test medians, their ratio to lcb, and throughput: tests graded per second for a batch
(`--attempts` responses x problems x tests) through `verify_batch` on `--slots` slots, each
attempt in its own isolated process (and, for isolation "test", each test). Prints the figures
and writes benchmarks/results/verifier_throughput.json.

    nice -n 10 .venv/bin/python benchmarks/verifier_throughput.py [--tests 8] [--slots 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from sdpo_core.verifiers import build_verifier
from sdpo_sandbox import Sandbox, SandboxSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import repo_relative

STDIN_PROGRAMS = {
    "sum": (
        "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))\n",
        lambda t: (" ".join(map(str, range(t + 5))) + "\n", f"{sum(range(t + 5))}\n"),
    ),
    "sort": (
        "n = int(input())\na = list(map(int, input().split()))\nprint(*sorted(a))\n",
        lambda t: (
            f"{t + 3}\n" + " ".join(str((7 * i) % 11) for i in range(t + 3)) + "\n",
            " ".join(map(str, sorted((7 * i) % 11 for i in range(t + 3)))) + "\n",
        ),
    ),
    "fib": (
        "n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, (a + b) % 1000000007\n"
        "print(a)\n",
        lambda t: (f"{100 * t}\n", f"{_fib(100 * t)}\n"),
    ),
    "words": (
        "from collections import Counter\nwords = input().split()\n"
        "w, c = Counter(words).most_common(1)[0]\nprint(w, c)\n",
        lambda t: ("a b " * t + "b c\n", f"b {t + 1}\n"),
    ),
}
CALL_PROGRAM = (
    "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
    "        seen = {}\n        for i, x in enumerate(nums):\n"
    "            if target - x in seen:\n                return [seen[target - x], i]\n"
    "            seen[x] = i\n"
)


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % 1000000007
    return a


def problems(n_tests: int) -> list[dict]:
    """[{name, code, fn_name, inputs, outputs}] in LiveCodeBench's input_output format."""
    out = []
    for name, (code, make) in STDIN_PROGRAMS.items():
        pairs = [make(t) for t in range(n_tests)]
        out.append({"name": name, "code": code, "fn_name": None,
                    "inputs": [p[0] for p in pairs], "outputs": [p[1] for p in pairs]})  # fmt: skip
    inputs, outputs = [], []
    for t in range(n_tests):
        nums = [*range(t + 2), 100]
        inputs.append(f"{json.dumps(nums)}\n{100 + t + 1}")
        outputs.append(json.dumps([t + 1, t + 2]))
    out.append({"name": "twoSum", "code": CALL_PROGRAM, "fn_name": "twoSum",
                "inputs": inputs, "outputs": outputs})  # fmt: skip
    return out


def _lcb_worker(problem: dict, queue: mp.Queue) -> None:
    from livecodebench.evaluation.testing_util import run_test

    io = {"inputs": problem["inputs"], "outputs": problem["outputs"]}
    if problem["fn_name"]:
        io["fn_name"] = problem["fn_name"]
    start = time.perf_counter()
    results, _ = run_test({"input_output": json.dumps(io)}, problem["code"], timeout=6)
    queue.put((time.perf_counter() - start, results))


def lcb_per_test(problem: dict) -> float:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_lcb_worker, args=(problem, queue))
    proc.start()
    elapsed, results = queue.get(timeout=60)
    proc.join()
    assert all(r is True for r in results), (problem["name"], results)
    return elapsed / len(problem["inputs"])


def spec(problem: dict, isolation: str = "attempt") -> dict:
    pairs = zip(problem["inputs"], problem["outputs"], strict=True)
    tests = [{"input": i, "output": o} for i, o in pairs]
    out = {"kind": "tests", "mode": "stdin", "tests": tests, "isolation": isolation}
    if problem["fn_name"]:
        out.update(mode="functional", fn_name=problem["fn_name"])
    return out


def verifier_per_test(sb: Sandbox, problem: dict, isolation: str) -> float:
    v = build_verifier(spec(problem, isolation))
    v._sandbox = sb
    start = time.perf_counter()
    verdict = v.verify(f"```python\n{problem['code']}```")
    elapsed = time.perf_counter() - start
    assert verdict.passed, (problem["name"], verdict.feedback)
    return elapsed / len(problem["inputs"])


def throughput(sb: Sandbox, probs: list[dict], attempts: int, isolation: str) -> tuple[float, int]:
    verifiers = [build_verifier(spec(p, isolation)) for p in probs]
    for v in verifiers:
        v._sandbox = sb
    total = attempts * sum(len(p["inputs"]) for p in probs)
    start = time.perf_counter()
    for v, p in zip(verifiers, probs, strict=True):
        verdicts = v.verify_batch([f"```python\n{p['code']}```"] * attempts)
        assert all(d.passed for d in verdicts), p["name"]
    return total / (time.perf_counter() - start), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=8)
    ap.add_argument("--attempts", type=int, default=16)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results/verifier_throughput.json")
    )
    args = ap.parse_args()
    probs = problems(args.tests)

    lcb, verifier, isolated = [], [], []
    settings = SandboxSettings.from_env()
    with Sandbox(SandboxSettings(**{**settings.__dict__, "slots": 1})) as sb:
        for p in probs:  # start the slot, warm the caches
            verifier_per_test(sb, p, "attempt")
        for _ in range(args.repeats):  # interleaved, so load from elsewhere hits all alike
            for p in probs:
                lcb.append(lcb_per_test(p))
                verifier.append(verifier_per_test(sb, p, "attempt"))
                isolated.append(verifier_per_test(sb, p, "test"))
        cgroup = getattr(sb._slots[0], "cgroup", None) is not None
    with Sandbox(SandboxSettings(**{**settings.__dict__, "slots": args.slots})) as sb:
        throughput(sb, probs[:1], 2, "attempt")  # start the slots
        tps, total = throughput(sb, probs, args.attempts, "attempt")
        tps_isolated, _ = throughput(sb, probs, args.attempts, "test")
    med = {k: statistics.median(v) * 1000 for k, v in
           (("lcb", lcb), ("verifier", verifier), ("isolated", isolated))}  # fmt: skip
    figures = {
        "problems": [p["name"] for p in probs],
        "tests_per_problem": args.tests,
        "repeats": args.repeats,
        "lcb_run_test_ms_per_test": round(med["lcb"], 3),
        "verifier_ms_per_test": round(med["verifier"], 3),
        "verifier_ratio_to_lcb": round(med["verifier"] / med["lcb"], 2),
        "verifier_isolated_ms_per_test": round(med["isolated"], 3),
        "verifier_isolated_ratio_to_lcb": round(med["isolated"] / med["lcb"], 2),
        "throughput_tests": total,
        "throughput_slots": args.slots,
        "tests_per_s": round(tps, 1),
        "tests_per_s_isolated": round(tps_isolated, 1),
        "sandbox_mode": settings.mode,
        "cgroup": cgroup,
        "sandbox_python": repo_relative(settings.python),
        "cpus": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "kernel": platform.release(),
        "command": "nice -n 10 .venv/bin/python benchmarks/verifier_throughput.py "
        f"--tests {args.tests} --attempts {args.attempts} --slots {args.slots} "
        f"--repeats {args.repeats}",
    }
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
