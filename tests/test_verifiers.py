"""Verifier kinds: correctness in every mode, each failure classified right, feedback wording,
bad specs, converters, and the examples of docs/verifiers.md. Real sandboxed processes."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import pickle
import re
import zlib
from pathlib import Path

import pytest

from sdpo_core.problem import ProblemError, parse_problem
from sdpo_core.verifiers import VerifierSpecError, build_verifier, parse_verifier
from sdpo_core.verifiers.converters import humaneval_problem, livecodebench_problem
from sdpo_core.verifiers.feedback import extract_code, summarize
from sdpo_core.verifiers.kinds.answer import extract_answer, parse_number
from sdpo_core.verifiers.kinds.tests import stdout_matches
from sdpo_sandbox import Sandbox, SandboxSettings

ROOT = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the namespace sandbox needs root")


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxSettings(slots=2)) as sb:
        yield sb


def make(spec: dict, sandbox: Sandbox):
    v = build_verifier(spec)
    if hasattr(v, "_sandbox"):
        v._sandbox = sandbox
    return v


def fence(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nDone."


# ----------------------------------------------------------------- pure comparison rules


def test_lcb_stdout_rules():
    assert stdout_matches("3\n", "3")
    assert stdout_matches("  1 2  \n3   \n\n", "1 2\n3")
    assert stdout_matches("1.0 2\n", "1 2.00")  # numbers equal as decimals
    assert not stdout_matches("1 2\n", "1\n2")  # line count differs
    assert not stdout_matches("0.3333333\n", "0.33333333")
    assert stdout_matches("0.3333333\n", "0.33333333", float_tol=1e-6)
    assert not stdout_matches("YES\n", "yes")
    assert not stdout_matches("1 2 3", "1 2")


def test_extract_code():
    assert extract_code("no fences\nprint(1)") == "no fences\nprint(1)"
    two = "```python\nprint(1)\n```\ntext\n```py\nprint(2)\n```\nbye"
    assert extract_code(two) == "print(2)\n"
    assert extract_code("```python\nprint(1)\n```\n```python\nprint(3)") == "print(3)"


def test_feedback_shows_the_two_shortest_wrong_answers_and_truncates():
    tests = [
        {"index": 0, "status": "passed", "input": "a", "expected": "a"},
        {"index": 1, "status": "wrong_answer", "input": "x" * 50, "expected": "1", "actual": "2"},
        {"index": 2, "status": "wrong_answer", "input": "yy", "expected": "1", "actual": "3"},
        {"index": 3, "status": "passed", "input": "z", "expected": "1"},
        {"index": 4, "status": "wrong_answer", "input": "w", "expected": "5", "actual": "4"},
    ]
    text = summarize(tests, 2000)
    assert text == (
        "Wrong Answer\nInput: yy\nExpected Output: 1\nYour Output: 3\n\n"
        "Wrong Answer\nInput: w\nExpected Output: 5\nYour Output: 4"
    )
    tests[1]["input"] = "x" * 5000
    tests[2]["status"] = tests[4]["status"] = "passed"
    short = summarize(tests, 300)
    assert len(short) <= 300 and short.startswith("Wrong Answer\nInput: xxx")
    assert "... (truncated)\nExpected Output: 1\nYour Output: 2" in short


def test_feedback_shows_a_crash_before_a_timeout_before_wrong_answers():
    """The authors' format_test_feedback order: the first test with an error, else the first
    timeout, else the wrong answers, wherever they stand among the tests."""
    wrong = {"index": 0, "status": "wrong_answer", "input": "1", "expected": "1", "actual": "2"}
    slow = {"index": 1, "status": "timeout", "input": "2", "expected": "1", "error": "Time limit"}
    crash = {"index": 2, "status": "runtime_error", "input": "3", "expected": "1", "error": "E"}
    assert summarize([wrong, slow, crash], 2000).startswith("Runtime Error\nInput: 3")
    assert summarize([wrong, slow], 2000).startswith("Time Limit Exceeded\nInput: 2")
    assert summarize([wrong], 2000).startswith("Wrong Answer\nInput: 1")


def test_no_code_is_incorrect_format_and_cut_at_the_limit_says_truncated(sandbox):
    """LiveCodeBench extraction without a fenced block: nothing runs, the feedback is the
    authors' "Incorrect Format"; the same attempt cut at max_new_tokens says it was truncated.
    A gradable attempt keeps its own feedback when truncated."""
    from sdpo_core.verifiers.base import INCORRECT_FORMAT, TRUNCATED_ATTEMPT, truncated_attempt

    v = make({**STDIN_SPEC, "code_extraction": "livecodebench"}, sandbox)
    bare, wrong = v.verify_batch(["I would add the numbers.", fence("print(0)")])
    assert not bare.passed and bare.feedback == INCORRECT_FORMAT
    assert bare.details["incorrect_format"] and bare.details["tests"] == []
    assert truncated_attempt(bare).feedback == TRUNCATED_ATTEMPT
    assert truncated_attempt(bare).details["truncated"]
    assert wrong.feedback.startswith("Wrong Answer") and truncated_attempt(wrong) == wrong
    answer = build_verifier({"kind": "answer", "expected": "42"})
    none = answer.verify("I am still thinking about")
    assert (
        none.details["incorrect_format"] and truncated_attempt(none).feedback == TRUNCATED_ATTEMPT
    )


# ----------------------------------------------------------------------- tests: stdin

STDIN_SPEC = {
    "kind": "tests",
    "mode": "stdin",
    "tests": [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "2 2\n", "output": "4\n"},
        {"input": "100 1\n", "output": "101\n"},
    ],
    "timeout_s": 1.5,
    "memory_mb": 256,
}
SUM = "a, b = map(int, input().split())\nprint(a + b)"


@needs_root
def test_stdin_classification(sandbox):
    v = make(STDIN_SPEC, sandbox)
    cases = {
        "pass": SUM,
        "wrong": "a, b = map(int, input().split())\nprint(a * b)",
        "runtime": "a, b = map(int, input().split())\nprint([a][b])",
        "timeout": "input()\nwhile True:\n    pass",
        "compile": "def f(:\n    pass",
        "memory": "x = bytearray(10**10)",
        "partial": "a, b = map(int, input().split())\nprint(a + b if a < 50 else 0)",
    }
    got = dict(zip(cases, v.verify_batch([fence(c) for c in cases.values()]), strict=True))

    ok = got["pass"]
    assert ok.passed and ok.score == 1.0 and ok.feedback == ""
    assert [t["status"] for t in ok.details["tests"]] == ["passed"] * 3
    assert ok.details["sandbox"] == "namespaces" and ok.details["total"] == 3

    wrong = got["wrong"]  # as LiveCodeBench: the first failing test ends the attempt
    assert not wrong.passed and wrong.score == 0.0
    assert wrong.feedback == "Wrong Answer\nInput: 1 2\nExpected Output: 3\nYour Output: 2"
    assert [t["status"] for t in wrong.details["tests"]] == ["wrong_answer", "skipped", "skipped"]

    rt = got["runtime"].feedback
    assert rt.startswith(
        "Runtime Error\nInput: 1 2\nExpected Output: 3\nThe program's stderr (last lines):\n"
        "```\nTraceback"
    )
    assert rt.endswith("IndexError: list index out of range\n```")
    assert 'File "solution.py", line 2' in rt

    tle = got["timeout"]
    assert tle.feedback == "Time Limit Exceeded\nInput: 1 2\nExpected Output: 3\nTime limit: 1.5 s"
    assert tle.score == 0.0
    assert tle.details["tests"][0]["status"] == "timeout"

    ce = got["compile"]
    assert ce.feedback.startswith("Compilation Error\n") and "SyntaxError" in ce.feedback
    assert {t["status"] for t in ce.details["tests"]} == {"compile_error"}

    mem = got["memory"]
    assert mem.feedback.startswith("Memory Limit Exceeded\nInput: 1 2")
    assert "Memory limit: 256 MB" in mem.feedback

    partial = got["partial"]
    assert partial.score == pytest.approx(2 / 3) and not partial.passed
    assert partial.feedback.startswith("Wrong Answer\nInput: 100 1")


@needs_root
def test_isolation_test_runs_every_test_in_a_fresh_process(sandbox):
    v = make({**STDIN_SPEC, "isolation": "test"}, sandbox)
    wrong = v.verify(fence("a, b = map(int, input().split())\nprint(a * b)"))
    assert not wrong.passed and wrong.score == pytest.approx(1 / 3)  # 2*2 == 2+2
    assert wrong.feedback == (
        "Wrong Answer\nInput: 1 2\nExpected Output: 3\nYour Output: 2\n\n"
        "Wrong Answer\nInput: 100 1\nExpected Output: 101\nYour Output: 100"
    )
    counter = "import os\nprint(len(os.listdir('.')) + 3)\nopen(str(os.getpid()), 'w')\n"
    fresh = make({**STDIN_SPEC, "tests": [STDIN_SPEC["tests"][0]] * 3}, sandbox)
    assert not fresh.verify(fence(counter)).passed  # one process: the second test sees a file
    fresh = make(
        {**STDIN_SPEC, "tests": [STDIN_SPEC["tests"][0]] * 3, "isolation": "test"}, sandbox
    )
    assert fresh.verify(fence(counter)).passed


@needs_root
def test_one_process_runs_the_tests_in_order_and_names_the_one_that_timed_out(sandbox):
    tests = [{"input": f"{n}\n", "output": f"{n}\n"} for n in (1, 2, 3)]
    v = make({"kind": "tests", "tests": tests, "timeout_s": 1}, sandbox)
    slow = "import sys\nn = int(input())\nprint('n', n, file=sys.stderr)\nprint(n)\n"
    slow += "while n == 2:\n    pass"
    verdict = v.verify(fence(slow))
    assert [t["status"] for t in verdict.details["tests"]] == ["passed", "timeout", "skipped"]
    assert verdict.feedback == "Time Limit Exceeded\nInput: 2\nExpected Output: 2\nTime limit: 1 s"
    # each test's output is its own, though one process printed them all
    # a test killed for its output, or at the memory limit, is named as such
    flood = (
        "import sys\nn = int(input())\nprint(n)\nwhile n == 2:\n    sys.stdout.write('x' * 99999)"
    )
    hog = (
        "n = int(input())\nprint(n)\nx = [bytearray(10**6) for _ in range(10**5)] if n == 2 else 0"
    )
    for code, status in ((flood, "output_limit"), (hog, "memory")):
        tests = v.verify(fence(code)).details["tests"]
        assert [t["status"] for t in tests] == ["passed", status, "skipped"]
    # what a program does to its stdio ends with its test
    closes = "import os, sys\nout = open(1, 'w')\nprint(input(), file=out)\nout.flush()\n"
    closes += "os.close(0)\nsys.stdout.close()\nsys.stdout = None\nos.close(2)"
    assert v.verify(fence(closes)).passed
    third = "n = int(input())\nprint(n if n != 3 else 'x' * n)"
    wrong = v.verify(fence(third)).details["tests"]
    assert [t["status"] for t in wrong] == ["passed", "passed", "wrong_answer"]
    assert wrong[2]["actual"] == "xxx\n"


@needs_root
def test_stdin_exit_and_signals(sandbox):
    v = make({**STDIN_SPEC, "tests": STDIN_SPEC["tests"][:1]}, sandbox)
    # as LiveCodeBench: SystemExit ends the program, its output so far is the answer
    assert v.verify(fence("print(3)\nimport sys\nsys.exit(3)")).passed
    exit3 = v.verify(fence("import os\nprint(3, flush=True)\nos._exit(3)"))
    assert exit3.feedback.endswith("Exit code 3")
    segv = v.verify(fence("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"))
    assert segv.feedback.endswith("Killed by SIGSEGV")
    null = v.verify(fence("import ctypes\nctypes.string_at(0)"))
    assert null.feedback.endswith("Killed by SIGSEGV")
    fast_exit = v.verify(
        fence("import os\nprint(3, flush=True)\nos.kill(os.getpid(), 9)\nprint(4)")
    )
    assert fast_exit.feedback.endswith("Killed by SIGKILL")
    assert v.verify(fence("print(3)\nraise SystemExit(0)")).passed
    assert v.verify("print(sum(map(int, input().split())))").passed  # no fence: whole text


# -------------------------------------------------------------------- tests: functional

FUNCTIONAL_SPEC = {
    "kind": "tests",
    "mode": "functional",
    "fn_name": "minPair",
    "tests": [
        {"input": "[3, 1, 2]", "output": "[1, 2]"},
        {"input": "[5, 4]", "output": "[4, 5]"},
    ],
    "timeout_s": 2,
}


@needs_root
def test_functional_modes(sandbox):
    v = make(FUNCTIONAL_SPEC, sandbox)
    method = (
        "class Solution:\n    def minPair(self, xs: List[int]) -> List[int]:\n"
        "        return tuple(sorted(xs)[:2])"
    )
    function = "def minPair(xs):\n    return sorted(xs)[:2]"
    wrong = "class Solution:\n    def minPair(self, xs):\n        return sorted(xs)[-2:]"
    unserialisable = "def minPair(xs):\n    return {1, 2}"
    missing = "def other(xs):\n    return xs"
    exits = "import sys\nsys.exit(0)"
    results = v.verify_batch([fence(c) for c in (method, function, wrong, unserialisable)])
    assert [r.passed for r in results] == [True, True, False, False]
    assert results[2].score == 0.0  # stopped at the first test, as LiveCodeBench
    assert results[2].feedback == (
        "Wrong Answer\nInput: [3, 1, 2]\nExpected Output: [1, 2]\nYour Output: [2, 3]"
    )
    assert "Your Output: {1, 2}" in results[3].feedback
    gone = v.verify(fence(missing))
    assert gone.feedback.startswith("Runtime Error") and "NameError" in gone.feedback
    early = v.verify(fence(exits))
    assert "exited (exit code 0) before the test finished" in early.feedback and not early.passed


# ------------------------------------------------------------------------ tests: assert


@needs_root
def test_assert_mode(sandbox):
    spec = {
        "kind": "tests",
        "mode": "assert",
        "test": "def check(candidate):\n"
        "    assert candidate(2) == 4\n"
        "    assert candidate(3) == 9\n",
        "entry_point": "square",
        "prefix": "import math\n\ndef square(x):\n    ...\n",
    }
    v = make(spec, sandbox)
    good, wrong, crash, exits = v.verify_batch(
        [
            fence("def square(x):\n    return int(math.pow(x, 2))"),  # prefix's import in scope
            fence("def square(x):\n    return x + x"),
            fence("def square(x):\n    return x / 0"),
            fence("import os\nos._exit(0)"),
        ]
    )
    assert good.passed and good.score == 1.0
    assert wrong.feedback.startswith("Wrong Answer\nTraceback")
    assert "assert candidate(3) == 9" in wrong.feedback and wrong.feedback.endswith(
        "AssertionError"
    )
    assert crash.feedback.startswith("Runtime Error\n") and "ZeroDivisionError" in crash.feedback
    assert not exits.passed and exits.details["tests"][0]["status"] == "runtime_error"

    mbpp = make(
        {
            "kind": "tests",
            "mode": "assert",
            "tests": ["assert f(1) == 2", "assert f(2) == 4", "assert f(3) == 7"],
        },
        sandbox,
    )
    assert mbpp.verify(fence("def f(x):\n    return 2 * x")).score == pytest.approx(2 / 3)


@needs_root
def test_assert_calls_with_computed_arguments_go_to_the_solution_as_values(sandbox):
    test = (
        "import random\n"
        "def double(x):\n    return 2 * x\n"
        "def check(candidate):\n"
        "    for _ in range(30):\n"
        "        a = random.randint(-100, 100)\n"
        "        assert candidate(a, double(a)) == 3 * a\n"
        "    assert candidate(a=1, b=2.5) == 3.5 and candidate(float('inf'), 1) == float('inf')\n"
        "    try:\n        candidate(None, 1)\n    except TypeError:\n        pass\n"
        "    else:\n        raise AssertionError('no TypeError')\n"
        "    assert candidate.__name__ == 'add'\n"
    )
    spec = {"kind": "tests", "mode": "assert", "test": test, "entry_point": "add", "timeout_s": 2}
    v = make(spec, sandbox)
    right, wrong, state, slow, unplain = v.verify_batch(
        [
            fence("def add(a, b):\n    return a + b"),
            fence("def add(a, b):\n    return a - b"),
            fence("n = []\ndef add(a, b):\n    n.append(1)\n    return a + b + (len(n) > 5)"),
            fence("def add(a, b):\n    while True:\n        pass"),
            fence("def add(a, b):\n    return object()"),
        ]
    )
    assert right.passed
    assert wrong.feedback.startswith("Wrong Answer") and "candidate(a, double(a))" in wrong.feedback
    assert not state.passed  # one solution process serves every call, in the test's order
    assert slow.details["tests"][0]["status"] == "timeout"
    assert "not a plain Python value" in unplain.feedback
    mbpp = {"kind": "tests", "mode": "assert", "tests": ["assert f([1] * 3) == 3"]}
    assert make(mbpp, sandbox).verify(fence("f = len")).passed


@needs_root
def test_async_twin(sandbox):
    v = make(STDIN_SPEC, sandbox)
    verdict = asyncio.run(v.averify(fence(SUM)))
    assert verdict.passed


# --------------------------------------------------------------------------------- answer


def test_answer_extraction():
    assert extract_answer(r"so \boxed{\frac{1}{2}} and \boxed{x^{2}}") == ("x^{2}", "boxed")
    assert extract_answer("work\nAnswer: 42\nthanks") == ("42", "answer_line")
    assert extract_answer("**Final Answer:** 7") == ("7", "answer_line")
    assert extract_answer("blah\n\n  12  \n") == ("12", "last_line")
    assert extract_answer("   ") == (None, "none")
    assert parse_number("$1,234.50") == 1234.5 and parse_number("3/4") == 0.75
    assert parse_number("about 17 apples") == 17 and parse_number("none") is None


def test_answer_matches():
    exact = build_verifier({"kind": "answer", "expected": "Paris"})
    assert exact.verify("The capital.\nAnswer: Paris.").passed
    miss = exact.verify("Answer: paris")
    assert not miss.passed and miss.feedback == "Wrong Answer\nYour Answer: paris"
    assert "Paris" not in miss.feedback  # not revealed by default
    loose = build_verifier({"kind": "answer", "expected": "Paris", "case_sensitive": False})
    assert loose.verify("Answer: paris").passed
    shown = build_verifier({"kind": "answer", "expected": "Paris", "reveal_expected": True})
    assert shown.verify("Answer: Rome").feedback.endswith("Expected Answer: Paris")

    num = build_verifier({"kind": "answer", "expected": 0.1, "match": "numeric", "tol": 1e-3})
    assert num.verify(r"\boxed{0.1001}").passed and not num.verify(r"\boxed{0.2}").passed
    rx = build_verifier({"kind": "answer", "expected": r"[A-D]", "match": "regex"})
    assert rx.verify("Answer: C").passed and not rx.verify("Answer: E").passed
    none = exact.verify("")
    assert not none.passed and "No final answer found" in none.feedback


def test_answer_math_and_its_timeout():
    v = build_verifier({"kind": "answer", "expected": r"\frac{1}{2}", "match": "math"})
    assert v.verify(r"\boxed{0.5}").passed and v.verify("Answer: 2/4").passed
    assert not v.verify(r"\boxed{1/3}").passed
    poly = build_verifier({"kind": "answer", "expected": "(x+1)^2", "match": "math"})
    assert poly.verify(r"\boxed{x^2+2x+1}").passed
    slow = build_verifier({"kind": "answer", "expected": "9", "match": "math", "timeout_s": 1})
    bomb = slow.verify(r"\boxed{9^{9^{9^{9}}}}")  # hangs sympy: must come back failed
    assert not bomb.passed and bomb.details["error"] == "math check timed out"
    assert slow.verify(r"\boxed{9}").passed  # the helper was restarted


# --------------------------------------------------------------------------------- python


@needs_root
def test_python_verifier(sandbox):
    src = (
        "import json\n"
        "def verify(response):\n"
        "    if 'crash' in response:\n"
        "        raise ValueError('boom')\n"
        "    if 'loop' in response:\n"
        "        while True: pass\n"
        "    if 'odd' in response:\n"
        "        return 'yes'\n"
        "    if response.strip() == 'ok':\n"
        "        return True\n"
        "    return False, 'say ok, not ' + json.dumps(response)\n"
    )
    v = make({"kind": "python", "source": src, "timeout_s": 1}, sandbox)
    ok, bad, crash, loop, odd = v.verify_batch(["ok", "no", "crash", "loop", "odd"])
    assert ok.passed and ok.score == 1.0 and ok.feedback == ""
    assert not bad.passed and bad.feedback == 'say ok, not "no"'
    assert crash.feedback == "" and "ValueError: boom" in crash.details["verifier_error"]
    assert "time limit" in loop.details["verifier_error"]
    assert "returned 'yes'" in odd.details["verifier_error"]
    plain = make({"kind": "python", "source": "def verify(r):\n    return len(r) > 3\n"}, sandbox)
    assert plain.verify("long enough").passed
    assert plain.verify("no").feedback == "Wrong Answer"


# -------------------------------------------------------------------------------- bad specs

BAD = [
    ([], "verifier"),
    ({"kind": "nope"}, "verifier.kind"),
    ({"kind": ["tests"]}, "verifier.kind"),
    ({"kind": "tests", "mode": "stdout", "tests": []}, "verifier.mode"),
    ({"kind": "tests", "tests": []}, "verifier.tests"),
    ({"kind": "tests", "tests": [{"input": "1"}]}, "verifier.tests.0.output"),
    ({"kind": "tests", "tests": [{"input": "1", "output": "2", "x": 1}]}, "verifier.tests.0.x"),
    (
        {"kind": "tests", "tests": [{"input": "", "output": ""}], "timeout_s": 0},
        "verifier.timeout_s",
    ),
    (
        {"kind": "tests", "tests": [{"input": "", "output": ""}], "memory_mb": "1G"},
        "verifier.memory_mb",
    ),
    ({"kind": "tests", "tests": [{"input": "", "output": ""}], "extra": 1}, "verifier.extra"),
    (
        {"kind": "tests", "mode": "functional", "tests": [{"input": "1", "output": "1"}]},
        "verifier.fn_name",
    ),
    ({"kind": "tests", "mode": "functional", "fn_name": "f x", "tests": []}, "verifier.fn_name"),
    (
        {
            "kind": "tests",
            "mode": "functional",
            "fn_name": "f",
            "tests": [{"input": "[1", "output": "1"}],
        },
        "verifier.tests.0.input",
    ),
    ({"kind": "tests", "mode": "assert", "entry_point": "f"}, "verifier.test"),
    ({"kind": "tests", "mode": "assert", "test": "assert (", "entry_point": "f"}, "verifier.test"),
    ({"kind": "answer"}, "verifier.expected"),
    ({"kind": "answer", "expected": "x", "match": "fuzzy"}, "verifier.match"),
    ({"kind": "answer", "expected": "(", "match": "regex"}, "verifier.expected"),
    ({"kind": "answer", "expected": "abc", "match": "numeric"}, "verifier.expected"),
    ({"kind": "python", "source": "def check(r):\n    return True\n"}, "verifier.source"),
    ({"kind": "python", "source": "def verify(r) return True"}, "verifier.source"),
]


@pytest.mark.parametrize(("spec", "field"), BAD)
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(VerifierSpecError) as err:
        build_verifier(spec)
    assert err.value.field == field and field in str(err.value)
    if isinstance(spec, dict):
        with pytest.raises(ProblemError) as perr:
            parse_problem({"prompt": "p", "verifier": spec})
        assert perr.value.field == field


def test_a_bad_spec_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').write('x')\n"  # no verify(): rejected unrun
    with pytest.raises(VerifierSpecError):
        parse_verifier({"kind": "python", "source": source})
    with pytest.raises(VerifierSpecError):
        parse_verifier({"kind": "tests", "mode": "assert", "test": source + "(", "prefix": source})
    assert not marker.exists()


# ----------------------------------------------------------------------------- converters


def _lcb_compress(tests: list[dict]) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


@needs_root
def test_livecodebench_stdin_record(sandbox):
    record = {
        "question_title": "Add",
        "question_content": "Print the sum of two integers.",
        "platform": "atcoder",
        "question_id": "abc000_a",
        "starter_code": "",
        "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
        "private_test_cases": _lcb_compress(
            [{"input": "4 4\n", "output": "8\n", "testtype": "stdin"}]
        ),
        "metadata": "{}",
    }
    problem = livecodebench_problem(record)
    assert parse_problem(problem).verifier.mode == "stdin"
    assert "Read the inputs from stdin" in problem["prompt"]
    assert len(problem["verifier"]["tests"]) == 2
    assert len(livecodebench_problem(record, include_private=False)["verifier"]["tests"]) == 1
    v = make(problem["verifier"], sandbox)
    assert v.verify(fence(SUM)).passed


def test_livecodebench_refuses_pickled_objects():
    evil = base64.b64encode(zlib.compress(pickle.dumps(Path("/etc")))).decode()
    record = {"public_test_cases": "[]", "private_test_cases": evil, "metadata": "{}"}
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        livecodebench_problem(record)


@needs_root
def test_livecodebench_functional_record(sandbox):
    record = {
        "question_content": "Return the sum of nums.",
        "starter_code": "class Solution:\n    def total(self, nums: List[int]) -> int:\n        ",
        "public_test_cases": json.dumps(
            [{"input": "[1, 2, 3]", "output": "6", "testtype": "functional"}]
        ),
        "private_test_cases": json.dumps(
            [{"input": "[]", "output": "0", "testtype": "functional"}]
        ),
        "metadata": json.dumps({"func_name": "total"}),
    }
    problem = livecodebench_problem(record)
    assert problem["verifier"]["fn_name"] == "total" and "starter code" in problem["prompt"]
    v = make(problem["verifier"], sandbox)
    good = "class Solution:\n    def total(self, nums: List[int]) -> int:\n        return sum(nums)"
    assert v.verify(fence(good)).passed


@needs_root
def test_humaneval_record(sandbox):
    record = {
        "task_id": "HumanEval/0",
        "prompt": "from typing import List\n\n\ndef has_close(xs: List[float], t: float) -> bool:\n"
        '    """True if two numbers are closer than t."""\n',
        "test": "def check(candidate):\n    assert candidate([1.0, 2.0, 1.5], 0.6)\n"
        "    assert not candidate([1.0, 3.0], 0.5)\n",
        "entry_point": "has_close",
    }
    problem = humaneval_problem(record)
    parse_problem(problem)
    v = make(problem["verifier"], sandbox)
    good = (
        "def has_close(xs: List[float], t: float) -> bool:\n"
        "    return any(abs(a - b) < t for i, a in enumerate(xs) for b in xs[i + 1:])"
    )
    assert v.verify(fence(good)).passed
    assert not v.verify(fence("def has_close(xs, t):\n    return True")).passed


# ------------------------------------------------------------------------ the docs' examples


def doc_examples() -> list[tuple[dict, str]]:
    text = (ROOT / "docs" / "verifiers.md").read_text()
    blocks = re.findall(r"^(```json|~~~text)\n(.*?)^(?:```|~~~)$", text, re.S | re.M)
    pairs = []
    for (kind, body), (next_kind, next_body) in itertools.pairwise(blocks):
        if kind == "```json" and next_kind == "~~~text":
            pairs.append((json.loads(body), next_body))
    return pairs


def test_docs_have_an_example_per_kind_and_mode():
    kinds = {(spec["kind"], spec.get("mode")) for spec, _ in doc_examples()}
    assert {("tests", "stdin"), ("tests", "functional"), ("tests", "assert")} <= kinds
    assert {("answer", None), ("python", None)} <= kinds


@needs_root
@pytest.mark.parametrize("index", range(6))
def test_docs_examples_pass(index, sandbox):
    spec, response = doc_examples()[index]
    verdict = make(spec, sandbox).verify(response)
    assert verdict.passed, verdict.feedback
