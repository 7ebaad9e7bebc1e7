"""The `tests` verifier: run the response's code on test cases in the sandbox.

Modes:
  stdin       the program reads stdin and prints; compared as LiveCodeBench does
  functional  LiveCodeBench call-based: each input line is one JSON argument, the output one
              JSON value; `class Solution` is instantiated when present
  assert      HumanEval / MBPP: the solution, then the test code, then check(entry_point)
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from sdpo_core.types import Verdict
from sdpo_core.verifiers.base import VerifierBase, VerifierSpecError
from sdpo_core.verifiers.feedback import extract_code, signal_name, summarize, traceback_tail
from sdpo_core.verifiers.sandbox import Job, RunResult, Sandbox, get_sandbox
from sdpo_core.verifiers.spec import (
    check_fields,
    check_python_source,
    get_bool,
    get_identifier,
    get_int,
    get_number,
    get_str,
)

MODES = ("stdin", "functional", "assert")
COMMON = {"kind", "mode", "timeout_s", "memory_mb", "max_feedback_chars", "stop_after_timeout"}
FIELDS = {
    "stdin": COMMON | {"tests", "float_tol"},
    "functional": COMMON | {"tests", "fn_name"},
    "assert": COMMON | {"test", "tests", "entry_point", "prefix"},
}


# ------------------------------------------------------------------------- comparisons


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _numbers(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except InvalidOperation:
        return None


def stdout_matches(actual: str, expected: str, float_tol: float = 0.0) -> bool:
    """LiveCodeBench's rule: line-wise after strip; unequal lines may still match as numbers.

    With float_tol == 0 numbers must be equal as decimals ("1.0" == "1"), as in LiveCodeBench;
    otherwise |a - b| <= float_tol * max(1, |b|) per token.
    """
    got, want = _lines(actual), _lines(expected)
    if len(got) != len(want):
        return False
    for a, b in zip(got, want, strict=True):
        if a == b:
            continue
        na, nb = _numbers(a), _numbers(b)
        if na is None or nb is None or len(na) != len(nb):
            return False
        for x, y in zip(na, nb, strict=True):
            if float_tol == 0:
                if x != y:
                    return False
            elif not abs(x - y) <= Decimal(repr(float_tol)) * max(Decimal(1), abs(y)):
                return False
    return True


def call_matches(reported: dict[str, Any], expected: str) -> tuple[bool, str]:
    """LiveCodeBench call-based rule: the JSON-decoded result == the JSON-decoded output."""
    if reported.get("result") is None:
        return False, reported.get("repr", "(no value)")
    actual = reported["result"]
    try:
        return json.loads(actual) == json.loads(expected), actual
    except ValueError:
        return False, actual


# ---------------------------------------------------------------------------- the spec


def _check_tests(spec: dict[str, Any]) -> list[dict[str, str]]:
    tests = spec.get("tests")
    if not isinstance(tests, list) or not tests:
        raise VerifierSpecError("must be a non-empty list of {input, output}", "tests")
    for i, test in enumerate(tests):
        if not isinstance(test, dict):
            raise VerifierSpecError("must be an object {input, output}", f"tests.{i}")
        check_fields(test, {"input", "output"}, f"tests.{i}.")
        for key in ("input", "output"):
            if not isinstance(test.get(key), str):
                raise VerifierSpecError("must be a string", f"tests.{i}.{key}")
    if spec.get("mode") == "functional":
        for i, test in enumerate(tests):
            for key in ("input", "output"):
                lines = test[key].split("\n") if key == "input" else [test[key]]
                try:
                    [json.loads(line) for line in lines]
                except ValueError:
                    what = "each line must be" if key == "input" else "must be"
                    raise VerifierSpecError(f"{what} JSON", f"tests.{i}.{key}") from None
    return tests


def validate_tests_spec(spec: dict[str, Any]) -> None:
    mode = spec.get("mode", "stdin")
    if mode not in MODES:
        raise VerifierSpecError(f"must be one of {list(MODES)}", "mode")
    check_fields(spec, FIELDS[mode])
    get_number(spec, "timeout_s", 6.0, 0.1, 60.0)
    get_int(spec, "memory_mb", 512, 64, 16384)
    get_int(spec, "max_feedback_chars", 2000, 200, 100_000)
    get_bool(spec, "stop_after_timeout", True)
    if mode == "stdin":
        _check_tests(spec)
        get_number(spec, "float_tol", 0.0, 0.0, 1.0)
    elif mode == "functional":
        get_identifier(spec, "fn_name", required=True)
        _check_tests(spec)
    else:
        has_one, has_list = "test" in spec, "tests" in spec
        if has_one == has_list:
            raise VerifierSpecError("give either 'test' (code) or 'tests' (list of code)", "test")
        if has_one:
            check_python_source(get_str(spec, "test", required=True), "test")
        else:
            tests = spec["tests"]
            if not isinstance(tests, list) or not tests:
                raise VerifierSpecError("must be a non-empty list of test code strings", "tests")
            for i, code in enumerate(tests):
                if not isinstance(code, str) or not code.strip():
                    raise VerifierSpecError("must be a non-empty string", f"tests.{i}")
                check_python_source(code, f"tests.{i}")
        get_identifier(spec, "entry_point", required=False)
        if "prefix" in spec:
            check_python_source(get_str(spec, "prefix"), "prefix")


# ------------------------------------------------------------------------ the verifier


class TestsVerifier(VerifierBase):
    __test__ = False  # not a pytest class

    """Runs each test in its own sandboxed process; tests and attempts run in parallel."""

    def __init__(self, spec: dict[str, Any], sandbox: Sandbox | None = None) -> None:
        validate_tests_spec(spec)
        self.spec = spec
        self.mode: str = spec.get("mode", "stdin")
        self.timeout_s = float(spec.get("timeout_s", 6.0))
        self.memory_mb = int(spec.get("memory_mb", 512))
        self.max_feedback_chars = int(spec.get("max_feedback_chars", 2000))
        self.stop_after_timeout = bool(spec.get("stop_after_timeout", True))
        self.float_tol = float(spec.get("float_tol", 0.0))
        self._sandbox = sandbox
        if self.mode == "assert":
            tests = [spec["test"]] if "test" in spec else list(spec["tests"])
            self.tests = [{"input": t, "output": None} for t in tests]
        else:
            self.tests = [{"input": t["input"], "output": t["output"]} for t in spec["tests"]]

    @property
    def sandbox(self) -> Sandbox:
        return self._sandbox or get_sandbox()

    def _job(self, code: str, test: dict[str, Any], group: int) -> Job:
        common = {"timeout_s": self.timeout_s, "memory_mb": self.memory_mb, "group": group}
        if self.mode == "stdin":
            return Job(code=code, harness="stdin", stdin=test["input"], **common)
        if self.mode == "functional":
            args = json.dumps([json.loads(line) for line in test["input"].split("\n")])
            return Job(code=code, harness="call", fn_name=self.spec["fn_name"], args=args, **common)
        return Job(
            code=code,
            harness="assert",
            test=test["input"],
            entry_point=self.spec.get("entry_point"),
            prefix=self.spec.get("prefix"),
            **common,
        )

    def verify(self, response: str) -> Verdict:
        return self.verify_batch([response])[0]

    def verify_batch(self, responses: list[str]) -> list[Verdict]:
        codes = [extract_code(r) for r in responses]
        jobs = [self._job(c, t, g) for g, c in enumerate(codes) for t in self.tests]
        stop_on = {"compile_error"} | ({"timeout"} if self.stop_after_timeout else set())
        results = self.sandbox.run_many(jobs, stop=lambda r: r.status in stop_on)
        n = len(self.tests)
        return [self._verdict(results[g * n : (g + 1) * n]) for g in range(len(codes))]

    def _outcome(self, i: int, test: dict[str, Any], run: RunResult) -> dict[str, Any]:
        expected = test["output"]
        out: dict[str, Any] = {
            "index": i,
            "status": "passed",
            "input": test["input"],
            "expected": expected,
            "time_s": round(run.wall_s, 4),
        }
        if run.status == "ok":
            if self.mode == "stdin":
                ok, actual = stdout_matches(run.stdout, expected, self.float_tol), run.stdout
            elif self.mode == "functional":
                ok, actual = call_matches(run.result, expected)
            else:
                ok, actual = True, None
            if not ok:
                out.update(status="wrong_answer", actual=actual)
        elif run.status == "skipped":
            out["status"] = "skipped"
        elif run.status == "compile_error":
            out.update(status="compile_error", error=run.result.get("compile_error", run.stderr))
        elif run.status == "timeout":
            out.update(status="timeout", error=f"Time limit: {self.timeout_s:g} s")
        elif run.status == "memory":
            out.update(status="memory", error=f"Memory limit: {self.memory_mb} MB")
        elif run.status == "output_limit":
            out.update(status="output_limit")
        elif self.mode == "assert" and run.result.get("exception") == "AssertionError":
            out.update(status="wrong_answer", error=traceback_tail(run.stderr))
        else:
            out.update(status="runtime_error", error=self._error_text(run))
        if self.mode == "assert":  # the traceback shows the failing assert; not all the tests
            out.update(input=None, expected=None)
        return out

    @staticmethod
    def _error_text(run: RunResult) -> str:
        if run.result.get("exception"):
            return traceback_tail(run.stderr)
        if "exit_called" in run.result:
            code = run.result["exit_called"]
            return f"The program exited (exit code {code}) before the test finished."
        if run.signal is not None:
            return f"Killed by {signal_name(run.signal)}"
        tail = traceback_tail(run.stderr)
        return f"Exit code {run.exit_code}" + (f"\n{tail}" if tail else "")

    def _verdict(self, runs: list[RunResult]) -> Verdict:
        pairs = enumerate(zip(self.tests, runs, strict=True))
        outcomes = [self._outcome(i, t, r) for i, (t, r) in pairs]
        compile_errors = [o for o in outcomes if o["status"] == "compile_error"]
        if compile_errors:  # the same for every test: say it once
            for o in outcomes:
                if o["status"] == "skipped":
                    o.update(status="compile_error", error=compile_errors[0]["error"])
        passed = sum(o["status"] == "passed" for o in outcomes)
        feedback = summarize(compile_errors[:1] or outcomes, self.max_feedback_chars)
        return Verdict(
            passed=passed == len(outcomes),
            score=passed / len(outcomes),
            feedback=feedback,
            details={
                "tests": [_compact(o) for o in outcomes],
                "passed": passed,
                "total": len(outcomes),
                "sandbox": runs[0].mode if runs else self.sandbox.mode,
            },
        )


def _compact(outcome: dict[str, Any], limit: int = 1000) -> dict[str, Any]:
    """details["tests"] entries with long strings cut, so a verdict stays small."""
    return {k: (v[:limit] if isinstance(v, str) else v) for k, v in outcome.items()}
