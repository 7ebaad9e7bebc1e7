"""The `table` verifier: the answer is a set of `key=value` pairs checked against a table.

Used by the bundled toy world (sdpo_core/toy). Trusted: it runs no user code.
Spec: {"kind": "table", "cases": {"c": "7", "h": "4"}, "max_failures": 2}
Feedback follows LiveCodeBench's wrong-answer wording, one block per failing case.
"""

from __future__ import annotations

import re
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


class TableSpec(SpecBase):
    """The answer is `key=value` pairs checked against a table (trusted, runs no code)."""

    kind: Literal["table"]
    cases: dict[str, str | int] = Field(
        ..., min_length=1, description="Input key -> expected word."
    )
    max_failures: int = Field(2, ge=1, le=10_000, description="Failing cases shown in feedback.")
    max_feedback_chars: FeedbackChars = 2000

    def check(self) -> None:
        for key, value in self.cases.items():
            if not str(key) or re.search(r"[\s=]", str(key)):
                raise VerifierSpecError(
                    f"key {key!r} must be non-empty without spaces or '='", "cases"
                )
            if re.search(r"\s", str(value)) or str(value) == "":
                raise VerifierSpecError(f"value for {key!r} must be a word without spaces", "cases")

    def build(self, sandbox: Any = None) -> TableVerifier:
        return TableVerifier(self)


def wrong_answer_block(key: str, expected: str, actual: str | None) -> str:
    shown = actual if actual is not None else "(missing)"
    return f"Wrong Answer\nInput: {key}\nExpected Output: {expected}\nYour Output: {shown}"


class TableVerifier(VerifierBase):
    def __init__(self, m: TableSpec) -> None:
        self.cases: dict[str, str] = {str(k): str(v) for k, v in m.cases.items()}
        self.max_failures = m.max_failures
        self.max_feedback_chars = m.max_feedback_chars

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
