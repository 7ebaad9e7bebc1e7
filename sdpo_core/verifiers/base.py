"""The verifier protocol, its one exception type, and the base of every kind's typed spec."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from sdpo_core.types import Verdict

# Validation context of a spec read back from storage: it passed every check at submit, so
# only its types are parsed again (no compiling of sources, no regexes).
STORED = "stored"


class VerifierSpecError(ValueError):
    """A verifier spec is invalid. `field` is the dotted path inside the spec."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"verifier.{field}: {message}" if field else f"verifier: {message}")
        self.message = message
        self.field = f"verifier.{field}" if field else "verifier"


@runtime_checkable
class Verifier(Protocol):
    def verify(self, response: str) -> Verdict: ...

    async def averify(self, response: str) -> Verdict: ...

    def verify_batch(self, responses: list[str]) -> list[Verdict]: ...


class VerifierBase:
    """Default async and batch twins on top of a synchronous `verify`."""

    def verify(self, response: str) -> Verdict:  # pragma: no cover - abstract
        raise NotImplementedError

    async def averify(self, response: str) -> Verdict:
        return await asyncio.to_thread(self.verify, response)

    def verify_batch(self, responses: list[str]) -> list[Verdict]:
        return [self.verify(r) for r in responses]


# What the teacher is told about an attempt with no gradable answer, and about one that was also
# cut at max_new_tokens (the authors' verl/utils/reward_score/feedback/code.py wording). A
# verdict marks the first with details["incorrect_format"] = True; the solve loop, which knows
# the finish reason, swaps in the second.
INCORRECT_FORMAT = "Incorrect Format: Put your code inside a ```python ... ``` block."
TRUNCATED_ATTEMPT = (
    "Truncated Attempt: Your previous response was too long and truncated because it reached "
    "the maximum response length. Try again with a shorter response."
)


def truncated_attempt(verdict: Verdict) -> Verdict:
    """`verdict` of an attempt cut at the length limit: a failing one without a gradable
    answer says it was truncated (a passing or gradable one is left as it is)."""
    if verdict.passed or not verdict.details.get("incorrect_format"):
        return verdict
    details = {**verdict.details, "truncated": True}
    return Verdict(False, verdict.score, TRUNCATED_ATTEMPT, details)


def truncate(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` characters, saying so at the end."""
    if limit <= 0 or len(text) <= limit:
        return text
    marker = "\n... (truncated)"
    return text[: max(0, limit - len(marker))] + marker


# ------------------------------------------------------------------------- typed specs


class SpecBase(BaseModel):
    """A verifier kind's spec. Its fields are the one place of each type, default and range
    (the OpenAPI document shows them); `check` holds what a type cannot say (syntax, regexes,
    test contents), and `build` makes the kind's verifier. Validating a spec runs both the
    types and `check`, so whatever validates also builds."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                allowed = sorted(cls.model_fields)
                raise VerifierSpecError(f"unknown field; allowed: {allowed}", unknown[0])
        return data

    @model_validator(mode="after")
    def _check_values(self, info: ValidationInfo) -> SpecBase:
        if not (info.context or {}).get(STORED):
            self.check()
        return self

    def check(self) -> None:
        """Raise VerifierSpecError naming the field for a value no type can rule out."""

    def build(self, sandbox: Any = None) -> Verifier:  # pragma: no cover - abstract
        """This kind's verifier. Building starts nothing; a sandbox starts on first use."""
        raise NotImplementedError


FeedbackChars = Annotated[
    int, Field(ge=200, le=100_000, description="Feedback longer than this is cut.")
]
MemoryMB = Annotated[
    int, Field(ge=64, le=16384, description="Memory limit of a run (the whole run's cgroup).")
]


def _identifier(value: str) -> str:
    if not value.isidentifier():
        raise ValueError(f"{value!r} is not a Python identifier")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]


class SandboxedSpec(SpecBase):
    """Fields of every kind that runs code in the sandbox."""

    timeout_s: float = Field(
        6.0, ge=0.1, le=60.0, allow_inf_nan=False, description="Per test, seconds."
    )
    memory_mb: MemoryMB = 512
    max_feedback_chars: FeedbackChars = 2000


MAX_SOURCE_CHARS = 100_000  # a verifier or test program; far above any real one


def check_python_source(source: str, key: str, max_chars: int = MAX_SOURCE_CHARS) -> None:
    """Syntax-check without running anything (compile only)."""
    if len(source) > max_chars:
        raise VerifierSpecError(f"longer than {max_chars} characters", key)
    try:
        compile(source, f"<{key}>", "exec", dont_inherit=True)
    except (MemoryError, RecursionError, OverflowError) as exc:
        raise VerifierSpecError(f"is too complex to compile ({type(exc).__name__})", key) from None
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        what = f"is not valid Python: {exc.__class__.__name__}{where}"
        raise VerifierSpecError(what, key) from None
