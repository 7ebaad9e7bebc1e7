"""The `answer` verifier: compare the response's final answer with an expected one.

The final answer is the last `\\boxed{...}`, else the last `Answer: ...` line, else the last
non-empty line. `match`: exact | numeric | regex | math (math-verify's equivalence checker).

math-verify can hang on adversarial input (e.g. 9^{9^{9^9}}) and its own timeout only works
in the main thread, so it runs in a helper process that is killed after `timeout_s`.
"""

from __future__ import annotations

import json
import math
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from typing import Any, Literal

from pydantic import Field

from sdpo_core.types import Verdict
from sdpo_core.verifiers.base import (
    FeedbackChars,
    SpecBase,
    VerifierBase,
    VerifierSpecError,
    truncate,
)

# Within one line only ([ \t], not \s): a run of blank lines must not make this quadratic. No
# two neighbouring parts may match the same blanks (`[ \t]*[*_]*[ \t]*` did, and a lazy `.+?`
# before `[ \t*_]*$`): the answer is taken to the line's end and its tail cut in `_answer`.
ANSWER_LINE = re.compile(
    r"^[ \t*#>_]*(?:final[ \t]+)?answer[ \t]*(?:[*_]+[ \t]*)?[:：][ \t*_]*(.+)$", re.I | re.M
)


def _answer(found: str) -> str:
    """An answer line's answer without its trailing blanks and emphasis (at least 1 char)."""
    return found.rstrip(" \t*_") or found[:1]


NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:[ \t]*/[ \t]*\d+)?")
HUGE_EXPONENT = re.compile(r"[eE][-+]?\d{5}")  # 1e999999999: Fraction would expand it
MAX_ANSWER_CHARS = 2000
MAX_SCAN_CHARS = 100_000  # the final answer is looked for in the response's last 100k chars


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else None


def extract_answer(response: str) -> tuple[str | None, str]:
    """(answer, where it came from: boxed | answer_line | last_line | none)."""
    response = response[-MAX_SCAN_CHARS:]
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed.strip(), "boxed"
    lines = ANSWER_LINE.findall(response)
    if lines:
        return _answer(lines[-1]).strip(), "answer_line"
    rest = [line.strip() for line in response.strip().splitlines() if line.strip()]
    if rest:
        return rest[-1], "last_line"
    return None, "none"


def _clean(text: str) -> str:
    text = " ".join(text.split())
    text = text.strip("$ ").removeprefix("**").removesuffix("**").strip()
    return text[:-1] if text.endswith(".") and not NUMBER.fullmatch(text) else text


def parse_number(text: str) -> float | None:
    """A number from `text` ("1,234", "$5", "3/4", "12%"), else its last number, else None."""
    text = text[:MAX_ANSWER_CHARS]
    cleaned = _clean(text).replace(",", "").replace("$", "").replace("\\%", "").rstrip("%")
    candidates = [cleaned] if NUMBER.fullmatch(cleaned) else NUMBER.findall(cleaned)[-1:]
    for cand in candidates:
        if HUGE_EXPONENT.search(cand):
            return None
        try:
            value = float(Fraction(re.sub(r"[ \t]", "", cand)))
        except (ValueError, ZeroDivisionError, OverflowError):
            return None
        return value if math.isfinite(value) else None
    return None


# ---------------------------------------------------------------- math-verify in a process

_WORKER = r"""
import json, sys
from math_verify import parse, verify
def wrap(s):
    return s if ("$" in s or "\\boxed" in s) else "$" + s + "$"
for line in sys.stdin:
    req = json.loads(line)
    try:
        gold = parse(wrap(req["gold"]), parsing_timeout=None)
        pred = parse(wrap(req["pred"]), parsing_timeout=None)
        ok = bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=None)
        out = {"ok": ok, "parsed": str(pred[0]) if pred else None}
    except Exception as exc:
        out = {"ok": False, "error": repr(exc)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class _MathWorker:
    """One long-lived python running math-verify. A check that overruns its `timeout_s` kills
    it and a fresh one starts at once, importing sympy in the background with its own budget
    (WARM_S), so the next check's time limit is its own again."""

    WARM_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._warming = False  # a warm-up request's answer is still to be read

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"gold": "1", "pred": "1"}) + "\n")
        self._proc.stdin.flush()
        self._warming = True

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _read(self, timeout_s: float) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        ready: list[Any] = []
        while not ready and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        return proc.stdout.readline() if ready else ""

    def check(self, gold: str, pred: str, timeout_s: float) -> dict[str, Any]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._spawn()
            if self._warming:
                self._warming = False
                if not self._read(self.WARM_S):
                    self._kill()
                    return {"ok": False, "error": "math checker did not start"}
            proc = self._proc
            assert proc is not None and proc.stdin is not None
            proc.stdin.write(json.dumps({"gold": gold, "pred": pred}) + "\n")
            proc.stdin.flush()
            line = self._read(timeout_s)
            if not line:
                self._kill()
                self._spawn()  # warms up while nobody waits
                return {"ok": False, "error": "math check timed out"}
            try:
                out = json.loads(line)
            except (ValueError, RecursionError):
                out = None
            return out if isinstance(out, dict) else {"ok": False, "error": "bad reply"}


_math = _MathWorker()


# ------------------------------------------------------------------------- the verifier


class AnswerSpec(SpecBase):
    """A final answer compared with `expected` (exact, numeric, regex or math)."""

    kind: Literal["answer"]
    expected: str | int | float
    match: Literal["exact", "numeric", "regex", "math"] = "exact"
    tol: float = Field(
        1e-6, ge=0.0, le=1e6, allow_inf_nan=False, description="Relative tolerance of `numeric`."
    )
    abs_tol: float = Field(
        0.0, ge=0.0, le=1e300, allow_inf_nan=False, description="Absolute tolerance of `numeric`."
    )
    case_sensitive: bool = True
    reveal_expected: bool = Field(False, description="Show `expected` in the feedback.")
    timeout_s: float = Field(
        5.0, ge=0.1, le=60.0, allow_inf_nan=False, description="Limit of a `math` check."
    )
    max_feedback_chars: FeedbackChars = 2000

    def check(self) -> None:
        expected = self.expected
        if isinstance(expected, str) and not expected.strip():
            raise VerifierSpecError("must not be empty", "expected")
        if self.match == "numeric" and parse_number(str(expected)) is None:
            raise VerifierSpecError("is not a number (match is numeric)", "expected")
        if self.match == "regex":
            try:
                re.compile(str(expected))
            except (re.error, OverflowError, RecursionError, MemoryError) as exc:
                raise VerifierSpecError(f"is not a valid regex: {exc}", "expected") from None

    def build(self, sandbox: Any = None) -> AnswerVerifier:
        return AnswerVerifier(self)


class AnswerVerifier(VerifierBase):
    def __init__(self, m: AnswerSpec) -> None:
        self.expected = str(m.expected)
        self.match: str = m.match
        self.tol = m.tol
        self.abs_tol = m.abs_tol
        self.case_sensitive = m.case_sensitive
        self.reveal_expected = m.reveal_expected
        self.timeout_s = m.timeout_s
        self.max_feedback_chars = m.max_feedback_chars

    def _matches(self, answer: str) -> tuple[bool, dict[str, Any]]:
        if self.match == "exact":
            a, b = _clean(answer), _clean(self.expected)
            if not self.case_sensitive:
                a, b = a.casefold(), b.casefold()
            return a == b, {}
        if self.match == "numeric":
            got, want = parse_number(answer), parse_number(self.expected)
            if got is None or want is None:
                return False, {"parsed": None}
            ok = abs(got - want) <= max(self.tol * abs(want), self.abs_tol)
            return ok, {"parsed": got}
        if self.match == "regex":
            return re.fullmatch(self.expected, answer.strip()) is not None, {}
        out = _math.check(self.expected, answer, self.timeout_s)
        return bool(out.get("ok")), {k: v for k, v in out.items() if k != "ok"}

    def verify(self, response: str) -> Verdict:
        answer, source = extract_answer(response)
        details: dict[str, Any] = {"answer": answer, "source": source, "match": self.match}
        if answer is None:
            details["incorrect_format"] = True
            feedback = (
                "Wrong Answer\nNo final answer found. Put the final answer in \\boxed{} "
                "or on a line starting with 'Answer:'."
            )
            return Verdict(False, 0.0, feedback, details)
        answer = answer[:MAX_ANSWER_CHARS]
        ok, extra = self._matches(answer)
        details.update(extra)
        if ok:
            return Verdict(True, 1.0, "", details)
        # a wrong answer read off the last line (no \boxed{}, no "Answer:"): not a marked answer,
        # so a response cut at the length limit says it was truncated (solve.py)
        details["incorrect_format"] = source == "last_line"
        lines = ["Wrong Answer", f"Your Answer: {answer}"]
        if self.reveal_expected:
            lines.append(f"Expected Answer: {self.expected}")
        return Verdict(False, 0.0, truncate("\n".join(lines), self.max_feedback_chars), details)
