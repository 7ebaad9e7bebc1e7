"""A wrong solution must not obtain a pass: each route to a forged verdict found so far.

Every solution below is wrong (`add` subtracts, or returns nothing useful) and tries to forge
the verdict. On the code before the test was moved out of the solution's process, the
result-fd, nonce-from-frame, patched-callable and always-equal routes passed here.
"""

from __future__ import annotations

import tracemalloc

import pytest

from sdpo_core.verifiers import build_verifier
from sdpo_core.verifiers.kinds.tests import solution_names
from sdpo_sandbox import Sandbox, SandboxSettings

HUMANEVAL = {
    "kind": "tests",
    "mode": "assert",
    "entry_point": "add",
    "test": (
        "import math\n"
        "METADATA = {}\n"
        "def check(candidate):\n"
        "    assert candidate(2, 3) == 5\n"
        "    assert candidate(-1, 1) == 0\n"
        "    assert math.isclose(candidate(0.5, 0.25), 0.75)\n"
    ),
    "timeout_s": 3,
}
MBPP = {
    "kind": "tests",
    "mode": "assert",
    "tests": ["assert add(2, 3) == 5", "assert add(10, -4) == 6"],
    "timeout_s": 3,
}

WRONG = "def add(a, b):\n    return a - b\n"
FORGERIES = {
    "done_on_result_fd": WRONG
    + 'import os\nos.write(3, b\'{"done": true, "ok": true}\\n\')\nos._exit(0)\n',
    "nonce_from_frame": WRONG
    + "import sys, os, json\n"
    + "f = sys._getframe()\n"
    + "while f is not None:\n"
    + "    n = f.f_locals.get('nonce')\n"
    + "    if isinstance(n, str):\n"
    + "        os.write(3, json.dumps({'nonce': n, 'ok': True, 'calls': []}).encode() + b'\\n')\n"
    + "        os._exit(0)\n"
    + "    f = f.f_back\n",
    "patched_callable": WRONG + "import builtins\nbuiltins.callable = lambda x: False\n",
    "global_used_by_asserts": WRONG + "math = type('M', (), {'isclose': lambda *a, **k: True})\n",
    "monkeypatched_isclose": WRONG + "import math\nmath.isclose = lambda *a, **k: True\n",
    "trace_hook_replaces_check": WRONG
    + "import sys\n"
    + "def tracer(frame, event, arg):\n"
    + "    if event == 'call' and frame.f_code.co_name == 'check':\n"
    + "        frame.f_globals['check'] = lambda c: None\n"
    + "    return None\n"
    + "sys.settrace(tracer)\nsys.setprofile(tracer)\n",
    "always_equal": "class Eq:\n    def __eq__(self, o):\n        return True\n"
    + "    def __bool__(self):\n        return True\n"
    + "def add(a, b):\n    return Eq()\n",
    "expected_from_test_source": "import gc, re\n"
    + "def add(a, b):\n"
    + "    for o in gc.get_objects():\n"
    + "        if isinstance(o, str) and 'candidate(' in o:\n"
    + "            m = re.search(r'candidate\\(%r, %r\\) == (\\S+)' % (a, b), o)\n"
    + "            if m:\n"
    + "                return eval(m.group(1))\n"
    + "    return None\n",
}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxSettings(slots=2)) as sb:
        yield sb


def make(spec: dict, sandbox: Sandbox):
    v = build_verifier(spec)
    v._sandbox = sandbox
    return v


def test_right_solution_passes(sandbox):
    right = "def add(a, b):\n    return a + b\n"
    assert make(HUMANEVAL, sandbox).verify(f"```python\n{right}```").passed
    assert make(MBPP, sandbox).verify(f"```python\n{right}```").passed


@pytest.mark.parametrize("name", sorted(FORGERIES))
@pytest.mark.parametrize("spec", [HUMANEVAL, MBPP], ids=["humaneval", "mbpp"])
def test_forgery_fails(sandbox, spec, name):
    verdict = make(spec, sandbox).verify(f"```python\n{FORGERIES[name]}```")
    assert not verdict.passed, verdict


def test_unauthenticated_and_malformed_channel_lines_do_not_crash(sandbox):
    spec = {
        "kind": "tests",
        "mode": "functional",
        "fn_name": "f",
        "tests": [{"input": "1", "output": "2"}],
    }
    flood = (
        "import os\n"
        "os.write(3, b'{\"repr\": 2}\\n' + b'[' * 100000 + b'\\n' + b'x\\n' * 200000)\n"
        "def f(x):\n    return 3\n"
    )
    verdict = make(spec, sandbox).verify(f"```python\n{flood}```")
    assert not verdict.passed  # a flood hides only the flooder's own report


def test_solution_names_are_the_entry_point_or_what_the_test_calls_undefined():
    assert solution_names(HUMANEVAL["test"], "add") == ["add"]
    test = "import math\nfrom os import sep\nx = 3\ndef g(y):\n    return y\n"
    test += "assert f(g(x)) == len(sep) and math.isclose(h(1), 2)\n"
    assert solution_names(test, None) == ["f", "h"]


def test_forged_setup_error_is_a_failing_verdict(sandbox):
    """The sandbox's own setup errors come back on a pipe the code never holds; a report that
    claims one is ignored like any other field the harness does not send."""
    forged = (
        "import sys, os, json\nf = sys._getframe()\nwhile f is not None:\n"
        "    n = f.f_locals.get('nonce')\n    if isinstance(n, str):\n"
        "        line = json.dumps({'nonce': n, 'setup_error': 'forged'}) + '\\n'\n"
        "        os.write(3, line.encode())\n        os._exit(111)\n    f = f.f_back\n"
    )
    stdin = {"kind": "tests", "tests": [{"input": "1\n", "output": "1\n"}], "timeout_s": 3}
    verdict = make(stdin, sandbox).verify(f"```python\n{forged}```")
    assert not verdict.passed and verdict.feedback.startswith("Runtime Error")
    verdict = make(MBPP, sandbox).verify(f"```python\n{forged}```")
    assert not verdict.passed
    python = {"kind": "python", "source": forged + "def verify(response):\n    return True\n"}
    verdict = make(python, sandbox).verify("anything")
    assert not verdict.passed and "verifier_error" in verdict.details


@pytest.mark.parametrize(
    "mode, code",
    [
        ("stdin", "s = input()\nraise ValueError(s)\n"),
        ("stdin", "import os\ns = input()\nos._exit(ord(s[0]))\n"),
        ("stdin", "import os, signal\ns = input()\nos.kill(os.getpid(), ord(s[1]) % 32)\n"),
        ("functional", "def f(s):\n    raise ValueError(s)\n"),
        ("functional", "def f(s):\n    raise type(s, (Exception,), {})()\n"),
        ("functional", "import sys\ndef f(s):\n    sys.exit(int.from_bytes(s.encode(), 'big'))\n"),
    ],
)
def test_held_out_input_never_reaches_feedback_through_the_programs_error(sandbox, mode, code):
    """A held-out test's error text is the program's (its stderr, an exception's message or
    type name, an exit code, a signal): a program that fails on purpose would write the
    input there, so a held-out runtime error says only that it was one."""
    spec: dict = {"kind": "tests", "mode": mode, "timeout_s": 3}
    spec["tests"] = [{"input": "SECRET", "output": "1", "hidden": True}]
    if mode == "functional":
        spec.update(fn_name="f", tests=[{"input": '"SECRET"', "output": '"1"', "hidden": True}])
    verdict = make(spec, sandbox).verify(f"```python\n{code}```")
    assert not verdict.passed and verdict.feedback.startswith("Runtime Error")
    assert verdict.details["tests"][0]["error"].startswith("(not shown")
    secret = str(int.from_bytes(b"SECRET", "big"))
    for shown in (verdict.feedback, repr(verdict.details)):
        assert "SECRET" not in shown and secret not in shown


NONCE = (
    "import gc, os\n"
    "def nonce():\n"
    "    for o in gc.get_objects():\n"
    "        if type(o).__name__ == '_Channel':\n"
    "            return o.nonce\n"
    "    f = sys._getframe()\n"
    "    while f is not None:\n"
    "        if isinstance(f.f_locals.get('nonce'), str):\n"
    "            return f.f_locals['nonce']\n"
    "        f = f.f_back\n"
    "import sys\n"
)
# One 15 MB line of 5 million empty objects, carrying the nonce: decoded, ~20x its size.
BLOAT = (
    'os.write(3, b\'{"nonce": "\' + nonce().encode() + b\'", "x": [\''
    " + b'{},' * 5_000_000 + b'{}]}\\n')\n"
)


def test_a_report_that_decodes_to_a_mountain_is_not_decoded(sandbox):
    """The parent decodes only lines shaped like the harness's reports (a flat object, at most
    a short list in it): 15 MB of `[{},{},...]` on the result channel made ~350 MB of
    objects in the verifier's process, per slot, per test."""
    functional = {
        "kind": "tests",
        "mode": "functional",
        "fn_name": "f",
        "tests": [{"input": "1", "output": "2"}, {"input": "2", "output": "3"}],
    }
    python = {
        "kind": "python",
        "source": NONCE + "def verify(response):\n    " + BLOAT + "    return False\n",
    }
    cases = [
        (functional, NONCE + "def f(x):\n    " + BLOAT + "    return x + 1\n", True),
        (python, "anything", False),
    ]
    for spec, response, passes in cases:
        verifier = make(spec, sandbox)
        tracemalloc.start()
        try:
            verdict = verifier.verify(f"```python\n{response}```")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert verdict.passed is passes, verdict
        assert peak < 100 * 1024 * 1024, f"{peak / 2**20:.0f} MB"


def test_test_code_reporting_odd_calls_is_a_failing_verdict(sandbox):
    """The test process's reports are type-checked too: a test that writes a "call" whose
    name is a list (unhashable) raised TypeError out of verify()."""
    test = (
        NONCE + "import json\n"
        "os.write(3, (json.dumps({'call': [1], 'args': '((), {})', 'seq': 0, 'nonce': nonce()})"
        " + '\\n').encode())\n"
        "assert add(2, 3) == 5\n"
    )
    spec = {"kind": "tests", "mode": "assert", "tests": [test], "timeout_s": 3}
    verdict = make(spec, sandbox).verify("def add(a, b):\n    return a + b\n")
    assert verdict.passed  # the odd report is skipped; the real call goes on


def test_tracebacks_show_no_harness_frames(sandbox):
    """Feedback shows the program's and the test's frames, never the harness's: its frames
    named the host path of the checkout (`/.../sdpo_sandbox/_harness.py`)."""
    mbpp = make(MBPP, sandbox).verify("def add(a, b):\n    return a / 0\n")
    stdin = {"kind": "tests", "tests": [{"input": "1\n", "output": "1\n"}], "timeout_s": 3}
    crash = make(stdin, sandbox).verify("def g():\n    raise ValueError('x')\ng()\n")
    for verdict in (mbpp, crash):
        assert not verdict.passed and "Traceback (most recent call last)" in verdict.feedback
        for ours in ("sdpo_sandbox", "sdpo_core", "_harness", "_forkserver"):
            assert ours not in verdict.feedback and ours not in repr(verdict.details), ours
    assert 'File "test_0.py", line 1' in mbpp.feedback and "ZeroDivisionError" in mbpp.feedback
    assert 'File "solution.py", line 2, in g' in crash.feedback


def test_output_of_passed_tests_is_not_kept(sandbox):
    """A correct program may write almost the output cap (8 MB) to stderr on every test; the
    verifier kept each passed test's output until the verdict (tests x 8 MB per attempt)."""
    spec = {
        "kind": "tests",
        "tests": [{"input": f"{i}\n", "output": f"{i}\n"} for i in range(12)],
        "timeout_s": 5,
    }
    noisy = "import sys\nx = input()\nsys.stderr.write('d' * (8 * 1024 * 1024 - 100))\nprint(x)\n"
    verifier = make(spec, sandbox)
    tracemalloc.start()
    try:
        verdict = verifier.verify(noisy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert verdict.passed, verdict
    assert peak < 48 * 1024 * 1024, f"{peak / 2**20:.0f} MB"


# Reads its own process's memory through a pipe (write() from any address fails instead of
# crashing): a fork server's freed buffers are inherited by every run it forks.
MEMORY_SCANNER = r"""
import ctypes, os, re
libc = ctypes.CDLL(None, use_errno=True)
libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
r, w = os.pipe()
def add(a, b):
    pattern = re.compile(rb"add\(%d, %d\) == (-?\d+)" % (a, b))
    for line in open("/proc/self/maps"):
        span, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in span.split("-"))
        if "r" not in perms or hi - lo > 1 << 28:
            continue
        for at in range(lo, hi, 65536):
            n = libc.write(w, at, min(65536, hi - at))
            found = pattern.search(os.read(r, n)) if n > 0 else None
            if found:
                return int(found.group(1))
    return 0
"""


def test_no_run_finds_test_code_left_in_its_fork_servers_memory(sandbox):
    """A slot whose server once forked a test process (test code in the request it parsed)
    restarts before it forks a solution: the scanner found `add(2, 3) == 5` in the freed
    memory of a server that had served the previous attempt's test process, and passed."""
    right = "def add(a, b):\n    return a + b\n"
    verifier = make(MBPP, sandbox)
    for _ in range(2):
        verdicts = verifier.verify_batch([right, MEMORY_SCANNER, MEMORY_SCANNER])
        assert [v.passed for v in verdicts] == [True, False, False], verdicts


def test_no_run_finds_another_attempts_code_in_its_fork_servers_memory(sandbox):
    """A program with no solution in it that runs the code of an earlier attempt (another
    tenant's, say) found in memory: the fork server parsed every run's code, and each run
    inherited its freed buffers. The server now never reads a run's code or data."""
    spec = {"kind": "tests", "tests": [{"input": "3\n", "output": "9\n"}], "timeout_s": 10}
    right = "# SOLUTION-MARK\nn = int(input())\nprint(n * n)\n"
    parasite = MEMORY_SCANNER.split("def add")[0] + (
        "import json\n"
        'pattern = re.compile(rb\'"code": ("\\x23 SOLUTION-MARK(?:[^"\\\\]|\\\\.)*")\')\n'
        "def find():\n"
        "    for line in open('/proc/self/maps'):\n"
        "        span, perms = line.split()[:2]\n"
        "        lo, hi = (int(x, 16) for x in span.split('-'))\n"
        "        if 'r' not in perms or hi - lo > 1 << 28:\n"
        "            continue\n"
        "        for at in range(lo, hi, 65536):\n"
        "            n = libc.write(w, at, min(65536, hi - at))\n"
        "            found = pattern.search(os.read(r, n)) if n > 0 else None\n"
        "            if found:\n"
        "                return json.loads(found.group(1))\n"
        "code = find()\n"
        "exec(code, {'__name__': '__main__'}) if code else print(0)\n"
    )
    verifier = make(spec, sandbox)
    for _ in range(2):
        verdicts = verifier.verify_batch([right, right])
        assert all(v.passed for v in verdicts)
        verdicts = verifier.verify_batch([parasite, parasite])
        assert not any(v.passed for v in verdicts), verdicts
