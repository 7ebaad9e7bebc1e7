"""The `table` verifier: the answer is a set of `key=value` pairs checked against a table.

Used by the bundled toy world (sdpo_core/toy). Trusted: it runs no user code.
Spec: {"kind": "table", "cases": {"c": "7", "h": "4"}, "max_failures": 2}
Feedback follows LiveCodeBench's wrong-answer wording, one block per failing case.
"""

from __future__ import annotations

import re
from typing import Any

from sdpo_core.types import Verdict
from sdpo_core.verifiers.base import VerifierBase, VerifierSpecError, truncate
from sdpo_core.verifiers.spec import get_int


def wrong_answer_block(key: str, expected: str, actual: str | None) -> str:
    shown = actual if actual is not None else "(missing)"
    return f"Wrong Answer\nInput: {key}\nExpected Output: {expected}\nYour Output: {shown}"


class TableVerifier(VerifierBase):
    def __init__(self, spec: dict[str, Any]) -> None:
        validate_table_spec(spec)
        self.cases: dict[str, str] = {str(k): str(v) for k, v in spec["cases"].items()}
        self.max_failures: int = int(spec.get("max_failures", 2))
        self.max_feedback_chars: int = int(spec.get("max_feedback_chars", 2000))

    def verify(self, response: str) -> Verdict:
        answers: dict[str, str] = {}
        for token in response.split():  # split, not a regex: linear on any input
            key, _, value = token.partition("=")
            if key and value:
                answers.setdefault(key, value)  # the first answer for a key counts
        outcomes = []
        failures = []
        for key, expected in self.cases.items():
            actual = answers.get(key)
            ok = actual == expected
            outcomes.append({"input": key, "passed": ok, "expected": expected, "actual": actual})
            if not ok:
                failures.append(wrong_answer_block(key, expected, actual))
        passed_count = sum(o["passed"] for o in outcomes)
        passed = passed_count == len(self.cases)
        feedback = "" if passed else "\n\n".join(failures[: self.max_failures])
        return Verdict(
            passed=passed,
            score=passed_count / len(self.cases),
            feedback=truncate(feedback, self.max_feedback_chars),
            details={"tests": outcomes},
        )


def validate_table_spec(spec: dict[str, Any]) -> None:
    cases = spec.get("cases")
    if not isinstance(cases, dict) or not cases:
        raise VerifierSpecError("must be a non-empty object of input -> expected output", "cases")
    for key, value in cases.items():
        if not str(key) or re.search(r"[\s=]", str(key)):
            raise VerifierSpecError(f"key {key!r} must be non-empty without spaces or '='", "cases")
        if not isinstance(value, (str, int)) or re.search(r"\s", str(value)) or str(value) == "":
            raise VerifierSpecError(f"value for {key!r} must be a word without spaces", "cases")
    get_int(spec, "max_failures", 2, 1, 10_000)
    get_int(spec, "max_feedback_chars", 2000, 200, 100_000)
    unknown = set(spec) - {"kind", "cases", "max_failures", "max_feedback_chars"}
    if unknown:
        raise VerifierSpecError("unknown field", sorted(unknown)[0])
