"""The `answer` verifier: compare the response's final answer with an expected one.

The final answer is the last `\\boxed{...}`, else the last `Answer: ...` line, else the last
non-empty line. `match`: exact | numeric | regex | math (math-verify's equivalence checker).

math-verify can hang on adversarial input (e.g. 9^{9^{9^9}}) and its own timeout only works
in the main thread, so it runs in a helper process that is killed after `timeout_s`.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from typing import Any

from sdpo_core.types import Verdict
from sdpo_core.verifiers.base import VerifierBase, VerifierSpecError, truncate
from sdpo_core.verifiers.spec import check_fields, get_bool, get_int, get_number

MATCHES = ("exact", "numeric", "regex", "math")
FIELDS = {
    "kind",
    "expected",
    "match",
    "tol",
    "case_sensitive",
    "reveal_expected",
    "timeout_s",
    "max_feedback_chars",
}
ANSWER_LINE = re.compile(
    r"^[\s*#>_]*(?:final\s+)?answer\s*[*_]*\s*[:：][\s*_]*(.+?)[\s*_]*$", re.I | re.M
)
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?")
MAX_ANSWER_CHARS = 2000


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
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed.strip(), "boxed"
    lines = ANSWER_LINE.findall(response)
    if lines:
        return lines[-1].strip(), "answer_line"
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
    cleaned = _clean(text).replace(",", "").replace("$", "").replace("\\%", "").rstrip("%")
    candidates = [cleaned] if NUMBER.fullmatch(cleaned) else NUMBER.findall(cleaned)[-1:]
    for cand in candidates:
        try:
            return float(Fraction(cand.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            return None
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
    """One long-lived python running math-verify; restarted when a check overruns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def check(self, gold: str, pred: str, timeout_s: float) -> dict[str, Any]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", _WORKER],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    start_new_session=True,
                )
                timeout_s += 30.0  # the first call imports sympy
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps({"gold": gold, "pred": pred}) + "\n")
            proc.stdin.flush()
            deadline = time.monotonic() + timeout_s
            ready: list[Any] = []
            while not ready and time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            line = proc.stdout.readline() if ready else ""
            if not line:
                proc.kill()
                proc.wait()
                self._proc = None
                return {"ok": False, "error": "math check timed out"}
            return json.loads(line)


_math = _MathWorker()


# ------------------------------------------------------------------------- the verifier


def validate_answer_spec(spec: dict[str, Any]) -> None:
    check_fields(spec, FIELDS)
    expected = spec.get("expected")
    if isinstance(expected, bool) or not isinstance(expected, str | int | float):
        raise VerifierSpecError("is required: a string or a number", "expected")
    if isinstance(expected, str) and not expected.strip():
        raise VerifierSpecError("must not be empty", "expected")
    match = spec.get("match", "exact")
    if match not in MATCHES:
        raise VerifierSpecError(f"must be one of {list(MATCHES)}", "match")
    if match == "numeric" and parse_number(str(expected)) is None:
        raise VerifierSpecError("is not a number (match is numeric)", "expected")
    if match == "regex":
        try:
            re.compile(str(expected))
        except (re.error, OverflowError, RecursionError, MemoryError) as exc:
            raise VerifierSpecError(f"is not a valid regex: {exc}", "expected") from None
    get_number(spec, "tol", 1e-6, 0.0, 1e6)
    get_bool(spec, "case_sensitive", True)
    get_bool(spec, "reveal_expected", False)
    get_number(spec, "timeout_s", 5.0, 0.1, 60.0)
    get_int(spec, "max_feedback_chars", 2000, 200, 100_000)


class AnswerVerifier(VerifierBase):
    def __init__(self, spec: dict[str, Any]) -> None:
        validate_answer_spec(spec)
        self.expected = str(spec["expected"])
        self.match: str = spec.get("match", "exact")
        self.tol = float(spec.get("tol", 1e-6))
        self.case_sensitive = bool(spec.get("case_sensitive", True))
        self.reveal = bool(spec.get("reveal_expected", False))
        self.timeout_s = float(spec.get("timeout_s", 5.0))
        self.max_feedback_chars = int(spec.get("max_feedback_chars", 2000))

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
            return abs(got - want) <= self.tol * max(1.0, abs(want)), {"parsed": got}
        if self.match == "regex":
            return re.fullmatch(self.expected, answer.strip()) is not None, {}
        out = _math.check(self.expected, answer, self.timeout_s)
        return bool(out.get("ok")), {k: v for k, v in out.items() if k != "ok"}

    def verify(self, response: str) -> Verdict:
        answer, source = extract_answer(response)
        details: dict[str, Any] = {"answer": answer, "source": source, "match": self.match}
        if answer is None:
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
        lines = ["Wrong Answer", f"Your Answer: {answer}"]
        if self.reveal:
            lines.append(f"Expected Answer: {self.expected}")
        return Verdict(False, 0.0, truncate("\n".join(lines), self.max_feedback_chars), details)
