"""The `tests` verifier: run the response's code on test cases in the sandbox.

Modes:
  stdin       the program reads stdin and prints; compared as LiveCodeBench does
  functional  LiveCodeBench call-based: each input line is one JSON argument, the output one
              JSON value; `class Solution` is instantiated when present
  assert      HumanEval / MBPP: the solution, then the test code, then check(entry_point)
"""

from __future__ import annotations

import ast
import builtins
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from sdpo_core.types import Verdict
from sdpo_core.verifiers.base import VerifierBase, VerifierSpecError
from sdpo_core.verifiers.feedback import (
    extract_code,
    program_stderr,
    signal_name,
    summarize,
    traceback_tail,
)
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
    "functional": COMMON | {"tests", "fn_name", "float_tol"},
    "assert": COMMON | {"test", "tests", "entry_point", "prefix"},
}


# ------------------------------------------------------------------------- comparisons


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


# A finite decimal with an exponent of at most 4 digits: NaN, Infinity and 1e999999999 are
# not numbers here (comparing them raised or ran unbounded).
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,4})?")
MAX_NUMBER_CHARS = 100_000


def _numbers(line: str) -> list[Decimal] | None:
    tokens = line.split()
    if not all(len(t) <= MAX_NUMBER_CHARS and _DECIMAL.fullmatch(t) for t in tokens):
        return None
    try:
        return [Decimal(tok) for tok in tokens]
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


MAX_VALUE_CHARS = 1_000_000
MAX_DEPTH = 100


def literal_value(text: str) -> tuple[bool, Any]:
    """(True, value) for a Python literal of bounded size, else (False, None). Never raises."""
    if len(text) > MAX_VALUE_CHARS:
        return False, None
    try:
        return True, ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def first_difference(actual: str, expected: str) -> str:
    """Where the output first differs, as "Line N: expected ..., got ..." (1-based)."""
    got, want = _lines(actual), _lines(expected)
    for n in range(max(len(got), len(want))):
        a = got[n] if n < len(got) else None
        b = want[n] if n < len(want) else None
        if a is None or b is None or not stdout_matches(a, b):
            shown_a = "(no line)" if a is None else repr(a[:200])
            shown_b = "(no line)" if b is None else repr(b[:200])
            return f"Line {n + 1}: expected {shown_b}, got {shown_a}"
    return ""


def values_match(got: Any, want: Any, float_tol: float, depth: int = 0) -> bool:
    """`got == want`, except that with float_tol > 0 numbers (also inside lists and dicts)
    match when |got - want| <= float_tol * max(1, |want|)."""
    if float_tol == 0 or depth > MAX_DEPTH:
        return bool(got == want)
    number = (int, float)
    if isinstance(got, number) and isinstance(want, number):
        if isinstance(got, bool) or isinstance(want, bool):
            return got == want
        try:
            return abs(got - want) <= float_tol * max(1.0, abs(want))
        except OverflowError:
            return False
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(
            values_match(a, b, float_tol, depth + 1) for a, b in zip(got, want, strict=True)
        )
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(
            values_match(got[k], want[k], float_tol, depth + 1) for k in want
        )
    return bool(got == want)


def call_matches(
    reported: dict[str, Any], expected: Any, float_tol: float = 0.0
) -> tuple[bool, str]:
    """LiveCodeBench call-based rule: the returned value (a top-level tuple as a list) equals
    the JSON-decoded output. The child returns the value's repr; the parent compares."""
    shown = reported.get("repr")
    if not isinstance(shown, str):
        return False, "(no value)"
    ok, value = literal_value(shown)
    if not ok:
        return False, shown
    try:
        return values_match(value, expected, float_tol), shown
    except RecursionError:
        return False, shown


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
        elif isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
    return deepest


_FOLD_OPS: dict[type, Any] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}
_FOLD_UNARY: dict[type, Any] = {
    ast.UAdd: lambda a: +a,
    ast.USub: lambda a: -a,
    ast.Not: lambda a: not a,
    ast.Invert: lambda a: ~a,
}
MAX_FOLDED = 100_000  # elements or digits a folded argument may have


def _folded_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3
    return len(value) if isinstance(value, str | bytes | list | tuple | set | dict) else 1


def constant_value(node: ast.AST, depth: int = 0) -> Any:
    """The value of an expression built only from literals, containers and arithmetic
    (`'ab' + 'c'`, `3 * 19`, `[-0, 1**0]`), as the test will pass it; ValueError otherwise.
    Bounded: no operand or result over MAX_FOLDED elements or digits."""
    if depth > 50:
        raise ValueError("nested too deep")
    if isinstance(node, ast.BinOp) and type(node.op) in _FOLD_OPS:
        left = constant_value(node.left, depth + 1)
        right = constant_value(node.right, depth + 1)
        if isinstance(node.op, ast.Pow | ast.Mult):  # bound the result before computing it
            if isinstance(node.op, ast.Pow) and (
                not isinstance(right, int | float) or abs(right) > 64
            ):
                raise ValueError("exponent out of bounds")
            if isinstance(node.op, ast.Mult) and _folded_size(left) * _folded_size(right) > (
                MAX_FOLDED
            ):
                raise ValueError("product out of bounds")
        value = _FOLD_OPS[type(node.op)](left, right)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _FOLD_UNARY:
        value = _FOLD_UNARY[type(node.op)](constant_value(node.operand, depth + 1))
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = [constant_value(e, depth + 1) for e in node.elts]
        value = {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    elif isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("dict unpacking")
        value = {
            constant_value(k, depth + 1): constant_value(v, depth + 1)  # type: ignore[arg-type]
            for k, v in zip(node.keys, node.values, strict=True)
        }
    else:
        value = ast.literal_eval(node)  # constants (ValueError for anything else)
    if _folded_size(value) > MAX_FOLDED:
        raise ValueError("value out of bounds")
    return value


def assert_calls(test: str, entry: str | None) -> list[tuple[str, str]]:
    """The solution's calls in assert-style test code whose arguments are literals, as
    (function name, repr of the argument tuple), in order, without repeats. `candidate` is
    `entry`; without an entry point, any top-level name the test neither defines nor gets
    from builtins is the solution's."""
    tree = ast.parse(test)
    defined = {"check"} | {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    defined |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    defined |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args}
    out: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        name = node.func.id
        if name == "candidate" and entry:
            target = entry
        elif name == entry or (
            entry is None and name not in defined and not hasattr(builtins, name)
        ):
            target = name
        else:
            continue
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            continue
        try:
            args = tuple(constant_value(a) for a in node.args)
        except (ValueError, TypeError, ArithmeticError, MemoryError, RecursionError):
            continue
        key = (target, repr(args))
        if key not in out:
            out.append(key)
    return out


# The trusted half of an assert-style test: the test code runs against these stubs, which
# answer each call with the value the solution returned for it in its own process.
STUB = """import ast as _ast
_RECORDED = {recorded!r}
def _stub(_name, _table):
    def call(*args):
        hit = _table.get(repr(args))
        if hit is None:
            raise RuntimeError(
                f"the test calls {{_name}}{{args!r}}, which was not run on the solution "
                "(only calls whose arguments are literals are)"
            )
        kind, payload = hit
        if kind == "raise":
            raise RuntimeError(f"{{_name}}{{args!r}} raised {{payload}}")
        try:
            return _ast.literal_eval(payload)
        except Exception:
            raise TypeError(
                f"{{_name}}{{args!r}} returned {{payload[:200]}}, not a plain Python value"
            ) from None
    call.__name__ = _name
    return call
for _n, _t in _RECORDED.items():
    globals()[_n] = _stub(_n, _t)
"""


def stub_code(calls: list[tuple[str, str]], results: list[Any]) -> str | None:
    """The stubs' source, or None when the solution's report is malformed."""
    if not isinstance(results, list) or len(results) != len(calls):
        return None
    recorded: dict[str, dict[str, list[str]]] = {}
    for (name, args), r in zip(calls, results, strict=True):
        ok = isinstance(r, list) and len(r) == 2 and r[0] in ("value", "raise")
        if not ok or not isinstance(r[1], str):
            return None
        recorded.setdefault(name, {})[args] = [r[0], r[1]]
    return STUB.format(recorded=recorded)


# ---------------------------------------------------------------------------- the spec


def _check_tests(spec: dict[str, Any]) -> list[dict[str, str]]:
    tests = spec.get("tests")
    if not isinstance(tests, list) or not tests:
        raise VerifierSpecError("must be a non-empty list of {input, output}", "tests")
    for i, test in enumerate(tests):
        if not isinstance(test, dict):
            raise VerifierSpecError("must be an object {input, output}", f"tests.{i}")
        check_fields(test, {"input", "output", "hidden"}, f"tests.{i}.")
        get_bool(test, "hidden", False)  # held out: counts, never shown in feedback
        for key in ("input", "output"):
            if not isinstance(test.get(key), str):
                raise VerifierSpecError("must be a string", f"tests.{i}.{key}")
    for i, test in enumerate(tests):
        for key in ("input", "output"):
            try:
                test[key].encode("utf-8")
            except UnicodeEncodeError:
                raise VerifierSpecError("is not valid UTF-8 text", f"tests.{i}.{key}") from None
    if spec.get("mode") == "functional":
        for i, test in enumerate(tests):
            for key in ("input", "output"):
                lines = test[key].split("\n") if key == "input" else [test[key]]
                what = "each line must be" if key == "input" else "must be"
                try:
                    values = [json.loads(line) for line in lines]
                except (ValueError, RecursionError):
                    raise VerifierSpecError(f"{what} JSON", f"tests.{i}.{key}") from None
                if any(_depth(v) > MAX_DEPTH for v in values):
                    raise VerifierSpecError(
                        f"{what} JSON nested at most {MAX_DEPTH} deep", f"tests.{i}.{key}"
                    )
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
        get_number(spec, "float_tol", 0.0, 0.0, 1.0)
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
            entry = spec.get("entry_point")
            self.calls = [assert_calls(t, entry) for t in tests]
        else:
            self.tests = [
                {"input": t["input"], "output": t["output"], "hidden": bool(t.get("hidden"))}
                for t in spec["tests"]
            ]
        for i, test in enumerate(self.tests):
            test["index"] = i
        if self.mode == "functional":
            self.expected = [json.loads(t["output"]) for t in self.tests]

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
        # assert: the solution only answers the test's calls; the test runs apart (_judge)
        calls = json.dumps(self.calls[test["index"]])
        prefix = self.spec.get("prefix")
        return Job(code=code, harness="calls", args=calls, prefix=prefix, **common)

    def _judge(self, run: RunResult, test_index: int, group: int) -> Job | RunResult:
        """The trusted half of an assert test: the test code against the solution's answers,
        in a process the solution never ran in. Its verdict is the test's."""
        if run.status != "ok":
            return run
        stubs = stub_code(self.calls[test_index], run.result.get("calls"))
        if stubs is None:
            return RunResult(status="error", stderr="the solution's process reported no results")
        return Job(
            code=stubs,
            harness="assert",
            test=self.tests[test_index]["input"],
            entry_point=self.spec.get("entry_point"),
            prefix=self.spec.get("prefix"),
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            group=group,
        )

    def verify(self, response: str) -> Verdict:
        return self.verify_batch([response])[0]

    def verify_batch(self, responses: list[str]) -> list[Verdict]:
        codes = [extract_code(r) for r in responses]
        jobs = [self._job(c, t, g) for g, c in enumerate(codes) for t in self.tests]
        stop_on = {"compile_error"} | ({"timeout"} if self.stop_after_timeout else set())
        results = self.sandbox.run_many(jobs, stop=lambda r: r.status in stop_on)
        n = len(self.tests)
        if self.mode == "assert":
            judged = [self._judge(r, k % n, k // n) for k, r in enumerate(results)]
            second = [j for j in judged if isinstance(j, Job)]
            answers = iter(self.sandbox.run_many(second) if second else [])
            results = [next(answers) if isinstance(j, Job) else j for j in judged]
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
                ok, actual = call_matches(run.result, self.expected[i], self.float_tol)
            else:
                ok, actual = True, None
            if not ok:
                out.update(status="wrong_answer", actual=actual)
                if self.mode == "stdin" and max(len(_lines(actual)), len(_lines(expected))) > 1:
                    out["first_diff"] = first_difference(actual, expected)
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
            out.update(status="runtime_error", error=self._error_text(run, self.mode != "assert"))
        if self.mode == "assert":  # the traceback shows the failing assert; not all the tests
            out.update(input=None, expected=None)
        if test.get("hidden"):  # held out: the verdict counts it, feedback shows nothing of it
            out.update(hidden=True, input=None, expected=None, actual=None, first_diff=None)
        return out

    @staticmethod
    def _error_text(run: RunResult, fenced: bool = True) -> str:
        """The grader's words first; the program's stderr only inside a delimited block."""
        shown = program_stderr if fenced else traceback_tail
        if run.result.get("exception"):
            return shown(run.stderr)
        if "exit_called" in run.result:
            code = run.result["exit_called"]
            return f"The program exited (exit code {code}) before the test finished."
        if run.signal is not None:
            return f"Killed by {signal_name(run.signal)}"
        tail = shown(run.stderr) if traceback_tail(run.stderr) else ""
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
