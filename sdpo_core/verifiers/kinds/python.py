"""The `python` verifier: a user's own `def verify(response)`, run inside the sandbox.

verify returns a bool, (bool, feedback_text), or (bool, feedback_text, score) with a finite
number as the score (an optimisation problem's objective; otherwise the score is 1 or 0). The
response is passed as data; it is never executed. A verifier that crashes or overruns fails
the response with empty feedback (the self-teacher should not learn from the verifier's bug)
and says why in details.
"""

from __future__ import annotations

import ast
import logging
import math
from typing import Any, Literal

from pydantic import Field

from sdpo_core.types import Verdict
from sdpo_core.verifiers.base import (
    SandboxedSpec,
    VerifierBase,
    VerifierSpecError,
    check_python_source,
    truncate,
)
from sdpo_core.verifiers.feedback import traceback_tail
from sdpo_sandbox import Job, RunResult, Sandbox, get_sandbox

log = logging.getLogger(__name__)


class PythonSpec(SandboxedSpec):
    """Your own `verify(response)` in Python, run in the sandbox."""

    kind: Literal["python"]
    source: str = Field(..., description="Python source defining verify(response).")
    timeout_s: float = Field(
        10.0, ge=0.1, le=120.0, allow_inf_nan=False, description="Per call, seconds."
    )

    def check(self) -> None:
        if not self.source.strip():
            raise VerifierSpecError("must be a non-empty string", "source")
        check_python_source(self.source, "source")
        names: set[str] = set()
        for node in ast.parse(self.source).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names.update((a.asname or a.name) for a in node.names)
        if "verify" not in names:
            raise VerifierSpecError("must define verify(response)", "source")

    def build(self, sandbox: Sandbox | None = None) -> PythonVerifier:
        return PythonVerifier(self, sandbox)


class PythonVerifier(VerifierBase):
    def __init__(self, m: PythonSpec, sandbox: Sandbox | None = None) -> None:
        self.source = m.source
        self.timeout_s = m.timeout_s
        self.memory_mb = m.memory_mb
        self.max_feedback_chars = m.max_feedback_chars
        self._sandbox = sandbox

    @property
    def sandbox(self) -> Sandbox:
        return self._sandbox or get_sandbox()

    def verify(self, response: str) -> Verdict:
        return self.verify_batch([response])[0]

    def verify_batch(self, responses: list[str]) -> list[Verdict]:
        jobs = [
            Job(
                code=self.source,
                harness="verify",
                data=r,
                timeout_s=self.timeout_s,
                memory_mb=self.memory_mb,
                group=i,
            )
            for i, r in enumerate(responses)
        ]
        return [self._verdict(run) for run in self.sandbox.run_many(jobs)]

    def _verdict(self, run: RunResult) -> Verdict:
        details: dict[str, Any] = {
            "sandbox": run.mode,
            "time_s": round(run.wall_s, 4),
            "memory_kills": run.oom_kills,  # processes of verify() killed at the memory limit
            "memory_cgroup": run.memory_cgroup,
        }
        value = run.result.get("value") if run.status == "ok" else None
        score: float | None = None
        if isinstance(value, bool):
            passed, feedback = value, ""
        elif (
            isinstance(value, list)
            and len(value) in (2, 3)
            and isinstance(value[0], bool)
            and (len(value) == 2 or _finite_number(value[2]))
        ):
            passed, feedback = value[0], str(value[1])
            score = float(value[2]) if len(value) == 3 else None
        else:
            if run.status == "ok":
                shown = value if isinstance(value, str) else repr(value)  # the child's repr
                error = (
                    f"verify() returned {shown}; expected a bool, (bool, feedback) or "
                    "(bool, feedback, score) with a finite number as score"
                )
            elif run.status == "timeout":
                error = f"verify() exceeded its time limit of {self.timeout_s:g} s"
            elif run.status == "memory":
                error = f"verify() exceeded its memory limit of {self.memory_mb} MB"
            else:
                error = traceback_tail(run.stderr) or f"verify() failed ({run.status})"
            log.warning("user verifier failed: %s", error.splitlines()[-1] if error else "")
            details["verifier_error"] = error
            return Verdict(False, 0.0, "", details)
        if passed:
            feedback = ""
        elif not feedback:
            feedback = "Wrong Answer"
        feedback = truncate(feedback, self.max_feedback_chars)
        if score is None:
            score = 1.0 if passed else 0.0
        return Verdict(passed, score, feedback, details)


def _finite_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]
