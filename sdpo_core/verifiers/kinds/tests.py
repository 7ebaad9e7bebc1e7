"""The `tests` verifier: run the response's code on test cases in the sandbox.

Modes:
  stdin       the program reads stdin and prints; compared as LiveCodeBench does
  functional  LiveCodeBench call-based: each input line is one JSON argument, the output one
              JSON value; `class Solution` is instantiated when present
  assert      HumanEval / MBPP: the test code (then check(entry_point)) in its own process,
              calling the solution in another through values

An attempt's tests run in one process as LiveCodeBench runs them (`sdpo_sandbox.run_tests`);
the values come back as data and are compared here.
"""

from __future__ import annotations

import ast
import builtins
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from sdpo_core.types import Verdict
from sdpo_core.verifiers.base import (
    INCORRECT_FORMAT,
    Identifier,
    SandboxedSpec,
    VerifierBase,
    VerifierSpecError,
    check_python_source,
)
from sdpo_core.verifiers.feedback import (
    extract_code,
    extract_code_livecodebench,
    memory_note,
    program_stderr,
    signal_name,
    summarize,
    traceback_tail,
)
from sdpo_sandbox import Job, RunResult, Sandbox, get_sandbox, run_asserts, run_tests

# ------------------------------------------------------------------------- comparisons


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


# A finite decimal with an exponent of at most 4 digits: NaN, Infinity and 1e999999999 are
# not numbers here (comparing them raised or ran unbounded). No two parts may match the same
# digits (`\d+\.?\d*` did): a long digit run ending in a letter then backtracks in linear time.
_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,4})?")
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


# Numbers in (nested) lists: JSON reads these as Python does, ~75x faster than literal_eval
# (a returned [[1]] * 190000 took 3 s of the verifier's CPU per comparison).
_JSON_NUMBERS = re.compile(r"[0-9 \[\],.eE+-]*")


def literal_value(text: str) -> tuple[bool, Any]:
    """(True, value) for a Python literal of bounded size, else (False, None). Never raises."""
    if len(text) > MAX_VALUE_CHARS:
        return False, None
    if _JSON_NUMBERS.fullmatch(text):
        try:
            return True, json.loads(text)
        except (ValueError, RecursionError):
            pass  # e.g. `1.` or `[1,]`: Python's grammar decides
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


def solution_names(test: str, entry: str | None) -> list[str]:
    """The solution's names that assert-style test code calls: `entry` (which `candidate`
    is) when given, and every name the test calls but neither defines, imports nor gets from
    builtins (HumanEval's tests call helpers the prompt defines, e.g. poly or encode_cyclic;
    its harness runs prompt, completion and test as one program)."""
    tree = ast.parse(test)
    defined = {"check"} | {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    defined |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    defined |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args}
    defined |= {
        (a.asname or a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    out: list[str] = [entry] if entry else []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name not in defined and not hasattr(builtins, name) and name not in out:
                out.append(name)
    return out


# ---------------------------------------------------------------------------- the spec


class IOTest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input: str
    output: str
    hidden: bool = Field(False, description="Held out: counts, never shown in feedback.")


class _TestsCommon(SandboxedSpec):
    kind: Literal["tests"]
    stop_after_timeout: bool = Field(
        True, description='isolation "test": skip the rest after a timeout.'
    )
    code_extraction: Literal["lenient", "livecodebench"] = Field(
        "lenient",
        description="lenient: the last fenced block, an unclosed final one too, else the whole "
        "response; livecodebench: the lines between the last two fence lines, else nothing.",
    )
    isolation: Literal["attempt", "test"] = Field(
        "attempt",
        description="attempt: all tests in one process, stopping at the first failure, as "
        "LiveCodeBench; test: each test in a fresh process, all run.",
    )

    def build(self, sandbox: Sandbox | None = None) -> TestsVerifier:
        return TestsVerifier(self, sandbox)  # type: ignore[arg-type]


def _check_io_tests(tests: list[IOTest], json_values: bool) -> None:
    for i, test in enumerate(tests):
        for key in ("input", "output"):
            try:
                getattr(test, key).encode("utf-8")
            except UnicodeEncodeError:
                raise VerifierSpecError("is not valid UTF-8 text", f"tests.{i}.{key}") from None
    if not json_values:
        return
    for i, test in enumerate(tests):
        for key in ("input", "output"):
            text = getattr(test, key)
            lines = text.split("\n") if key == "input" else [text]
            what = "each line must be" if key == "input" else "must be"
            try:
                values = [json.loads(line) for line in lines]
            except (ValueError, RecursionError):
                raise VerifierSpecError(f"{what} JSON", f"tests.{i}.{key}") from None
            if any(_depth(v) > MAX_DEPTH for v in values):
                raise VerifierSpecError(
                    f"{what} JSON nested at most {MAX_DEPTH} deep", f"tests.{i}.{key}"
                )


class StdinTestsSpec(_TestsCommon):
    """LiveCodeBench stdin/stdout tests: the program reads input, prints output."""

    mode: Literal["stdin"] = "stdin"
    tests: list[IOTest] = Field(..., min_length=1)
    float_tol: float = Field(
        0.0, ge=0.0, le=1.0, description="Relative tolerance for numbers; 0 = exact."
    )

    def check(self) -> None:
        _check_io_tests(self.tests, json_values=False)


class FunctionalTestsSpec(_TestsCommon):
    """LiveCodeBench functional tests: `fn_name` is called with JSON arguments, one per line."""

    mode: Literal["functional"]
    fn_name: Identifier
    tests: list[IOTest] = Field(..., min_length=1)
    float_tol: float = Field(
        0.0, ge=0.0, le=1.0, description="Tolerance for returned numbers; 0 = exact."
    )

    def check(self) -> None:
        _check_io_tests(self.tests, json_values=True)


class AssertTestsSpec(_TestsCommon):
    """HumanEval-style test code (`check(candidate)` or bare asserts)."""

    mode: Literal["assert"]
    test: str | None = Field(None, description="Test code; give `test` or `tests`.")
    tests: list[str] | None = Field(
        None, min_length=1, description="Test snippets, each run on its own."
    )
    entry_point: Identifier | None = Field(None, description="Function passed to `check`.")
    prefix: str = Field("", description="Code put before the answer (e.g. imports).")

    def check(self) -> None:
        if (self.test is None) == (self.tests is None):
            raise VerifierSpecError("give either 'test' (code) or 'tests' (list of code)", "test")
        if self.test is not None:
            if not self.test.strip():
                raise VerifierSpecError("must be a non-empty string", "test")
            check_python_source(self.test, "test")
        for i, code in enumerate(self.tests or ()):
            if not code.strip():
                raise VerifierSpecError("must be a non-empty string", f"tests.{i}")
            check_python_source(code, f"tests.{i}")
        if self.prefix:
            check_python_source(self.prefix, "prefix")


TEST_MODES = ("stdin", "functional", "assert")


def _tests_mode(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("mode", "stdin")
    return getattr(value, "mode", "stdin")


TestsSpec = Annotated[
    Annotated[StdinTestsSpec, Tag("stdin")]
    | Annotated[FunctionalTestsSpec, Tag("functional")]
    | Annotated[AssertTestsSpec, Tag("assert")],
    Discriminator(_tests_mode),
]
AnyTestsSpec = StdinTestsSpec | FunctionalTestsSpec | AssertTestsSpec


# ------------------------------------------------------------------------ the verifier


class TestsVerifier(VerifierBase):
    """Runs an attempt's tests in one sandboxed process, in order, stopping at the first
    failure, as LiveCodeBench's `run_test` does (`isolation: "test"`: each test in a fresh
    process, all of them run); attempts run in parallel over the sandbox's slots."""

    __test__ = False  # not a pytest class

    def __init__(self, m: AnyTestsSpec, sandbox: Sandbox | None = None) -> None:
        self.spec = m
        self.mode: str = m.mode
        self.timeout_s = m.timeout_s
        self.memory_mb = m.memory_mb
        self.max_feedback_chars = m.max_feedback_chars
        self.stop_after_timeout = m.stop_after_timeout
        self.isolation: str = m.isolation
        self.code_extraction: str = m.code_extraction
        self.float_tol = 0.0 if isinstance(m, AssertTestsSpec) else m.float_tol  # unused there
        self._sandbox = sandbox
        if isinstance(m, AssertTestsSpec):
            tests = [m.test] if m.test is not None else list(m.tests or ())
            self.tests = [{"input": t, "output": None} for t in tests]
            self.names = sorted({n for t in tests for n in solution_names(t, m.entry_point)})
        else:
            self.tests = [
                {"input": t.input, "output": t.output, "hidden": t.hidden} for t in m.tests
            ]
        for i, test in enumerate(self.tests):
            test["index"] = i
        if self.mode == "functional":
            self.expected = [json.loads(t["output"]) for t in self.tests]
            self.args = [[json.loads(x) for x in t["input"].split("\n")] for t in self.tests]

    @property
    def sandbox(self) -> Sandbox:
        return self._sandbox or get_sandbox()

    def _run(
        self, slots: list[Any], code: str, indices: list[int], judged: dict[int, dict[str, Any]]
    ) -> list[RunResult]:
        """The tests `indices` of one attempt, in one run (two for assert tests); each judged
        outcome goes into `judged` (by id of its result) for the verdict to reuse."""
        common = {
            "timeout_s": self.timeout_s,
            "memory_mb": self.memory_mb,
            "budget_s": self.timeout_s * (len(indices) + 1) + 5.0,
        }

        def judge(k: int, run: RunResult) -> bool:
            i = indices[k]
            judged[id(run)] = outcome = self._outcome(i, self.tests[i], run)
            if outcome["status"] != "passed":
                return False
            run.stdout = run.stderr = ""  # no feedback needs it: tests x 8 MB per attempt
            return True

        if self.mode == "assert":
            assert isinstance(self.spec, AssertTestsSpec)
            prefix = self.spec.prefix or None
            solution = Job(code=code, harness="serve", prefix=prefix, **common)
            tests = Job(
                code="",
                harness="check",
                prefix=prefix,
                tests=tuple(self.tests[i]["input"] for i in indices),
                names=tuple(self.names),
                entry_point=self.spec.entry_point,
                **common,
            )
            return run_asserts(slots, solution, tests, judge)
        if self.mode == "stdin":
            job = Job(code=code, harness="tests", mode="stdin", **common)
            messages = [{"input": self.tests[i]["input"]} for i in indices]
        else:
            assert isinstance(self.spec, FunctionalTestsSpec)
            job = Job(code=code, harness="tests", mode="call", fn_name=self.spec.fn_name, **common)
            messages = [{"args": self.args[i]} for i in indices]
        return run_tests(slots[0], job, messages, judge)

    def verify(self, response: str) -> Verdict:
        return self.verify_batch([response])[0]

    def verify_batch(self, responses: list[str]) -> list[Verdict]:
        extract = (
            extract_code_livecodebench if self.code_extraction == "livecodebench" else extract_code
        )
        codes = [extract(r) for r in responses]
        n = len(self.tests)
        if self.isolation == "attempt":
            units = [(g, list(range(n))) for g in range(len(codes))]
        else:
            units = [(g, [i]) for g in range(len(codes)) for i in range(n)]
        stop_on = {"compile_error"} | ({"timeout"} if self.stop_after_timeout else set())
        stopped = {g for g, code in enumerate(codes) if not code.strip()}  # nothing to run
        judged: dict[int, dict[str, Any]] = {}

        def one(slots: list[Any], unit: tuple[int, list[int]]) -> list[RunResult]:
            g, indices = unit
            if g in stopped:  # isolation "test": a test of this attempt compiled not or timed out
                return [RunResult(status="skipped", mode=self.sandbox.mode) for _ in indices]
            results = self._run(slots, codes[g], indices, judged)
            if any(r.status in stop_on for r in results):
                stopped.add(g)
            return results

        slots = 2 if self.mode == "assert" else 1
        per_unit = self.sandbox.map(one, units, n=slots)
        runs: list[list[RunResult]] = [[] for _ in codes]
        for (g, _), results in zip(units, per_unit, strict=True):
            runs[g].extend(results)
        return [
            self._verdict(r, judged) if code.strip() else _no_code()
            for r, code in zip(runs, codes, strict=True)
        ]

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
            if out["status"] == "runtime_error":  # the program's words: it may echo the input
                out["error"] = HELD_OUT_ERROR
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

    def _verdict(self, runs: list[RunResult], judged: dict[int, dict[str, Any]]) -> Verdict:
        pairs = enumerate(zip(self.tests, runs, strict=True))
        outcomes = [judged.get(id(r)) or self._outcome(i, t, r) for i, (t, r) in pairs]
        if self.isolation == "attempt":
            _withhold_after_hidden(outcomes)
        compile_errors = [o for o in outcomes if o["status"] == "compile_error"]
        if compile_errors:  # the same for every test: say it once
            for o in outcomes:
                if o["status"] == "skipped":
                    o.update(status="compile_error", error=compile_errors[0]["error"])
        passed = sum(o["status"] == "passed" for o in outcomes)
        # one run's count on every test of it (isolation "attempt"), or each test's own run's
        counts = [r.oom_kills for r in runs]
        kills = (max(counts) if self.isolation == "attempt" else sum(counts)) if counts else 0
        note = memory_note(kills, self.memory_mb) if passed < len(outcomes) else ""
        room = self.max_feedback_chars - (len(note) + 2 if note else 0)
        feedback = summarize(compile_errors[:1] or outcomes, room)
        cgroups = {r.memory_cgroup for r in runs if r.memory_cgroup is not None}
        return Verdict(
            passed=passed == len(outcomes),
            score=passed / len(outcomes),
            feedback=f"{note}\n\n{feedback}" if note else feedback,
            details={
                "tests": [_compact(o) for o in outcomes],
                "passed": passed,
                "total": len(outcomes),
                "sandbox": runs[0].mode if runs else self.sandbox.mode,
                "memory_kills": kills,  # processes killed at the memory limit
                # whether a cgroup held the whole run to memory_mb (else per-process rlimits)
                "memory_cgroup": cgroups == {True} if cgroups else None,
            },
        )


WITHHELD = "(not shown: the program ran a held-out test before this one)"
HELD_OUT_ERROR = "(not shown: the program's error output on a held-out test)"


def _no_code() -> Verdict:
    """An attempt with no code to run (LiveCodeBench extraction found no fenced block; or an
    empty response): the authors' "Incorrect Format" feedback, nothing run."""
    return Verdict(False, 0.0, INCORRECT_FORMAT, {"incorrect_format": True, "tests": []})


def _withhold_after_hidden(outcomes: list[dict[str, Any]]) -> None:
    """In one process a program can keep a held-out test's input and print it later: what a
    program wrote after a held-out test ran is not shown."""
    ran_hidden = False
    for o in outcomes:
        if ran_hidden and o["status"] == "wrong_answer" and o.get("actual") is not None:
            o.update(actual=WITHHELD, first_diff=None)
        elif ran_hidden and o["status"] == "runtime_error":
            o.update(error=WITHHELD)
        ran_hidden = ran_hidden or (o.get("hidden", False) and o["status"] != "skipped")


def _compact(outcome: dict[str, Any], limit: int = 1000) -> dict[str, Any]:
    """details["tests"] entries with long strings cut, so a verdict stays small."""
    return {k: (v[:limit] if isinstance(v, str) else v) for k, v in outcome.items()}
