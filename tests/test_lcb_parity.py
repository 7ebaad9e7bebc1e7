"""Differential test: our `tests` verifier against LiveCodeBench's own grader.

LiveCodeBench's `testing_util.run_test` (package nvidia-livecodebench, a test dependency) runs
in a subprocess per program (its reliability_guard disables parts of the interpreter). Both
get the same LiveCodeBench-format problems and model-style responses; LiveCodeBench sees the
code its own extraction takes from the response. Verdicts must be identical except for the
documented options listed in DOCUMENTED.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sdpo_core.verifiers import build_verifier
from sdpo_sandbox import Sandbox, SandboxSettings

pytest.importorskip("livecodebench.evaluation.testing_util")

TIMEOUT = 2
LCB = r"""
import json, sys
from livecodebench.evaluation.testing_util import run_test
from livecodebench.utils.extraction_utils import extract_code
from livecodebench.lm_styles import LMStyle
req = json.loads(sys.stdin.read())
code = extract_code(req["response"], LMStyle.OpenAIChat)
results, _ = run_test({"input_output": json.dumps(req["io"])}, test=code, timeout=req["t"])
sys.__stdout__.write("\n@@" + json.dumps(bool(results) and all(r is True for r in results)))
"""


def fence(code: str, prose: str = "") -> str:
    return f"{prose}```python\n{code}\n```\n"


SUM = {  # stdin
    "inputs": ["1 2\n", "10 -4\n", "0 0\n"],
    "outputs": ["3\n", "6\n", "0\n"],
}
SUM_PROGRAMS = {
    "correct": "a, b = map(int, input().split())\nprint(a + b)",
    "wrong": "a, b = map(int, input().split())\nprint(a * b)",
    "whitespace": "a, b = map(int, input().split())\nprint('  ', a + b, '  ')\nprint()",
    "float_equal": "a, b = map(int, input().split())\nprint(f'{a + b}.000')",
    "runtime_error": "a, b = map(int, input().split())\nprint([][a + b])",
    "timeout": "while True:\n    pass",
    "debug_print_stderr": "import sys\na, b = map(int, input().split())\n"
    "print('debug', a, file=sys.stderr)\nprint(a + b)",
    "debug_print_stdout": "a, b = map(int, input().split())\nprint('debug')\nprint(a + b)",
    "main_guard": "def main():\n    a, b = map(int, input().split())\n    print(a + b)\n"
    "if __name__ == '__main__':\n    main()",
    "stdin_buffer": "import sys\na, b = map(int, sys.stdin.buffer.read().split())\nprint(a + b)",
    "global": "total = 0\ndef add(x):\n    global total\n    total += x\n"
    "for x in map(int, input().split()):\n    add(x)\nprint(total)",
    "quit_after_print": "a, b = map(int, input().split())\nprint(a + b)\nquit()",
    "exit_before_print": "import sys\nsys.exit(0)\nprint(3)",
    "exit_nonzero_after_print": "import sys\na, b = map(int, input().split())\nprint(a + b)\n"
    "sys.exit(3)",
    "state_in_imported_module": "import math\nif hasattr(math, 'seen'):\n    print(0)\nelse:\n"
    "    math.seen = 1\n    a, b = map(int, input().split())\n    print(a + b)",
    "open_zero": "a, b = map(int, open(0).read().split())\nprint(a + b)",
    "lru_cache": "from functools import lru_cache\n@lru_cache(None)\ndef f(a, b):\n"
    "    return a + b\na, b = map(int, input().split())\nprint(f(a, b))",
    "syntax_error": "a, b = map(int, input().split()\nprint(a + b)",
}
BIG = {  # stdin, a 5,000-digit answer
    "inputs": ["5000\n"],
    "outputs": ["1" + "0" * 4999 + "\n"],
}
BIG_PROGRAMS = {
    "big_int": "n = int(input())\nprint(10 ** (n - 1))",
    "big_int_wrong": "n = int(input())\nprint(10 ** n)",
}
MEAN = {  # stdin, float output compared as decimals
    "inputs": ["3\n1 2 4\n", "2\n1 2\n"],
    "outputs": ["2.3333333333\n", "1.5\n"],
}
MEAN_PROGRAMS = {
    "exact_digits": "n = int(input())\nxs = list(map(int, input().split()))\n"
    "print(f'{sum(xs) / n:.10f}')",
    "too_few_digits": "n = int(input())\nxs = list(map(int, input().split()))\n"
    "print(f'{sum(xs) / n:.4f}')",
    "repr_float": "n = int(input())\nxs = list(map(int, input().split()))\nprint(sum(xs) / n)",
}
PAIR = {  # functional, class Solution
    "fn_name": "minPair",
    "inputs": ["[3, 1, 2]", "[5, 4]", "[7, 7, 1]"],
    "outputs": ["[1, 2]", "[4, 5]", "[1, 7]"],
}
PAIR_PROGRAMS = {
    "correct": "class Solution:\n    def minPair(self, xs: List[int]) -> List[int]:\n"
    "        return sorted(xs)[:2]",
    "tuple": "class Solution:\n    def minPair(self, xs):\n        return tuple(sorted(xs)[:2])",
    "nested_tuple": "class Solution:\n    def minPair(self, xs):\n"
    "        return [tuple(sorted(xs)[:2])][0:1][0] if False else [*sorted(xs)[:2]]",
    "wrong": "class Solution:\n    def minPair(self, xs):\n        return sorted(xs)[-2:]",
    "runtime_error": "class Solution:\n    def minPair(self, xs):\n        return xs[10]",
    "timeout": "class Solution:\n    def minPair(self, xs):\n        while True:\n            pass",
    "main_guard": "class Solution:\n    def minPair(self, xs):\n        return sorted(xs)[:2]\n"
    "if __name__ == '__main__':\n    print(Solution().minPair(input()))",
    "prose_around": "class Solution:\n    def minPair(self, xs):\n        return sorted(xs)[:2]",
    "debug_print": "class Solution:\n    def minPair(self, xs):\n        print('debug', xs)\n"
    "        return sorted(xs)[:2]",
    "mutable_default": "class Solution:\n    def minPair(self, xs, seen=[]):\n"
    "        seen.extend(xs)\n        return sorted(xs)[:2]",
    "state_across_tests": "class Solution:\n    calls = 0\n    def minPair(self, xs):\n"
    "        Solution.calls += 1\n        return sorted(xs)[:2] if Solution.calls == 1 else xs",
    "instance_state": "class Solution:\n    def __init__(self):\n        self.n = 0\n"
    "    def minPair(self, xs):\n        self.n += 1\n"
    "        return sorted(xs)[:2] if self.n == 1 else xs",
    "mutable_default_state": "class Solution:\n    def minPair(self, xs, seen=[]):\n"
    "        seen.append(1)\n        return sorted(xs)[:2] if len(seen) == 1 else xs",
    "module_global_state": "calls = 0\nclass Solution:\n    def minPair(self, xs):\n"
    "        global calls\n        calls += 1\n        return sorted(xs)[:2] if calls < 3 else xs",
    "second_test_times_out": "class Solution:\n    def minPair(self, xs):\n"
    "        while len(xs) == 2:\n            pass\n        return sorted(xs)[:2]",
    "quit": "class Solution:\n    def minPair(self, xs):\n        quit()",
}
GRID = {  # functional, a tuple of tuples
    "fn_name": "pairs",
    "inputs": ["2"],
    "outputs": ["[[0, 1], [1, 0]]"],
}
GRID_PROGRAMS = {
    "nested_tuple": "def pairs(n):\n    return ((0, 1), (1, 0))",
    "lists": "def pairs(n):\n    return [[0, 1], [1, 0]]",
    "top_tuple_of_lists": "def pairs(n):\n    return ([0, 1], [1, 0])",
}

# Differences (listed in docs/verifiers.md, "Differences from LiveCodeBench"): (problem,
# program) -> why. All four are LiveCodeBench's harness failing correct programs (it wraps
# stdin programs in a function and replaces sys.stdin with a StringIO). State kept across
# tests (class attributes, instances, mutable defaults, globals, imported modules) shows
# here as there: an attempt's tests share one process, one module and one Solution().
DOCUMENTED: dict[tuple[str, str], str] = {
    ("SUM", "stdin_buffer"): "LiveCodeBench's sys.stdin has no .buffer",
    ("SUM", "global"): "LiveCodeBench wraps the program in a function: `global` breaks",
    ("SUM", "quit_after_print"): "LiveCodeBench counts quit() after the output as a failure",
    ("SUM", "open_zero"): "LiveCodeBench's open(0) reads the grader's own stdin, not the test's",
}
PROBLEMS = {
    "SUM": (SUM, SUM_PROGRAMS),
    "BIG": (BIG, BIG_PROGRAMS),
    "MEAN": (MEAN, MEAN_PROGRAMS),
    "PAIR": (PAIR, PAIR_PROGRAMS),
    "GRID": (GRID, GRID_PROGRAMS),
}


def lcb_verdict(io: dict, response: str) -> bool:
    req = json.dumps({"io": io, "response": response, "t": TIMEOUT})
    out = subprocess.run(
        [sys.executable, "-c", LCB], input=req, capture_output=True, text=True, timeout=120
    )
    return json.loads(out.stdout.rsplit("@@", 1)[1])


def our_spec(io: dict) -> dict:
    tests = [{"input": i, "output": o} for i, o in zip(io["inputs"], io["outputs"], strict=True)]
    spec = {"kind": "tests", "tests": tests, "timeout_s": TIMEOUT}
    if io.get("fn_name"):
        spec.update(mode="functional", fn_name=io["fn_name"])
    return spec


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxSettings(slots=2)) as sb:
        yield sb


def test_verdicts_match_livecodebench(sandbox):
    rows = []
    for pname, (io, programs) in PROBLEMS.items():
        v = build_verifier(our_spec(io))
        v._sandbox = sandbox
        for name, code in programs.items():
            prose = "Here is my solution:\n\n" if name == "prose_around" else ""
            response = fence(code, prose) + ("\nIt runs in O(n)." if prose else "")
            ours = v.verify(response).passed
            theirs = lcb_verdict(io, response)
            rows.append((pname, name, ours, theirs))
    same = sum(o == t for _, _, o, t in rows)
    differ = [(p, n, o, t) for p, n, o, t in rows if o != t]
    print(f"\nLiveCodeBench parity: {same}/{len(rows)} identical verdicts")
    for p, n, o, t in differ:
        print(f"  differs: {p}/{n}: ours={o} lcb={t} ({DOCUMENTED.get((p, n), 'UNDOCUMENTED')})")
    assert [(p, n) for p, n, _, _ in differ if (p, n) not in DOCUMENTED] == []


EXTRACTION_CASES = [
    "```python\nprint(1)\n```",
    "prose\n```python\nprint(1)\n```\nmore prose\n```\nprint(2)\n```\n",
    "```python\nprint(1)\n",  # unclosed: cut at max_new_tokens
    "print(1)",  # no fence at all
    "text ``` inline ``` text\n```py\nx = 1\n```",
    "",
]


def test_livecodebench_code_extraction_is_theirs():
    """`code_extraction: "livecodebench"` takes exactly the code LiveCodeBench's extraction
    takes; the default differs only where documented (unclosed or missing fences)."""
    from livecodebench.lm_styles import LMStyle
    from livecodebench.utils.extraction_utils import extract_code as lcb_extract

    from sdpo_core.verifiers.feedback import extract_code, extract_code_livecodebench

    for response in EXTRACTION_CASES:
        assert extract_code_livecodebench(response) == lcb_extract(response, LMStyle.OpenAIChat)
    assert extract_code(EXTRACTION_CASES[2]) == "print(1)\n"  # lenient: unclosed counts
    assert extract_code(EXTRACTION_CASES[3]) == "print(1)"  # lenient: unfenced taken whole


def test_code_extraction_option_changes_the_verdict(sandbox):
    io = {"inputs": ["1 2\n"], "outputs": ["3\n"]}
    unclosed = "```python\na, b = map(int, input().split())\nprint(a + b)\n"
    verdicts = {}
    for mode in ("lenient", "livecodebench"):
        v = build_verifier({**our_spec(io), "code_extraction": mode})
        v._sandbox = sandbox
        verdicts[mode] = v.verify(unclosed).passed
    assert verdicts == {"lenient": True, "livecodebench": lcb_verdict(io, unclosed)}
    assert verdicts["livecodebench"] is False
