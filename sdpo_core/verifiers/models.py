"""Typed verifier specs: one pydantic model per kind (and per mode of `tests`).

The one place of each field's type, default and range: the OpenAPI document shows them,
submit checks them, and each verifier is built from its parsed model (`parse_spec`), so
no default is written twice. The verifiers' own `validate_*_spec` functions then check
what a type cannot say (syntax, regexes, test contents); submit and worker run the same
rules (`check_verifier_spec` = `sdpo_core.verifiers.validate_spec`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)

from sdpo_core.verifiers.base import VerifierSpecError
from sdpo_core.verifiers.spec import check_fields

_STRICT = ConfigDict(extra="forbid", strict=True)
FeedbackChars = Annotated[
    int, Field(ge=200, le=100_000, description="Feedback longer than this is cut.")
]


def _identifier(value: str) -> str:
    if not value.isidentifier():
        raise ValueError(f"{value!r} is not a Python identifier")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]
MemoryMB = Annotated[
    int, Field(ge=64, le=16384, description="Memory limit of a run (the whole run's cgroup).")
]


class TableSpec(BaseModel):
    """The answer is `key=value` pairs checked against a table (trusted, runs no code)."""

    model_config = _STRICT
    kind: Literal["table"]
    cases: dict[str, str | int] = Field(
        ..., min_length=1, description="Input key -> expected word."
    )
    max_failures: int = Field(2, ge=1, le=10_000, description="Failing cases shown in feedback.")
    max_feedback_chars: FeedbackChars = 2000


class _Sandboxed(BaseModel):
    model_config = _STRICT
    timeout_s: float = Field(
        6.0, ge=0.1, le=60.0, allow_inf_nan=False, description="Per test, seconds."
    )
    memory_mb: MemoryMB = 512
    max_feedback_chars: FeedbackChars = 2000


class IOTest(BaseModel):
    model_config = _STRICT
    input: str
    output: str
    hidden: bool = Field(False, description="Held out: counts, never shown in feedback.")


class _TestsCommon(_Sandboxed):
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


class StdinTestsSpec(_TestsCommon):
    """LiveCodeBench stdin/stdout tests: the program reads input, prints output."""

    mode: Literal["stdin"] = "stdin"
    tests: list[IOTest] = Field(..., min_length=1)
    float_tol: float = Field(
        0.0, ge=0.0, le=1.0, description="Relative tolerance for numbers; 0 = exact."
    )


class FunctionalTestsSpec(_TestsCommon):
    """LiveCodeBench functional tests: `fn_name` is called with JSON arguments, one per line."""

    mode: Literal["functional"]
    fn_name: Identifier
    tests: list[IOTest] = Field(..., min_length=1)
    float_tol: float = Field(
        0.0, ge=0.0, le=1.0, description="Tolerance for returned numbers; 0 = exact."
    )


class AssertTestsSpec(_TestsCommon):
    """HumanEval-style test code (`check(candidate)` or bare asserts)."""

    mode: Literal["assert"]
    test: str | None = Field(None, description="Test code; give `test` or `tests`.")
    tests: list[str] | None = Field(
        None, min_length=1, description="Test snippets, each run on its own."
    )
    entry_point: Identifier | None = Field(None, description="Function passed to `check`.")
    prefix: str = Field("", description="Code put before the answer (e.g. imports).")


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


class AnswerSpec(BaseModel):
    """A final answer compared with `expected` (exact, numeric, regex or math)."""

    model_config = _STRICT
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


class PythonSpec(_Sandboxed):
    """Your own `verify(response)` in Python, run in the sandbox."""

    kind: Literal["python"]
    source: str = Field(..., description="Python source defining verify(response).")
    timeout_s: float = Field(
        10.0, ge=0.1, le=120.0, allow_inf_nan=False, description="Per call, seconds."
    )


def _kind(value: Any) -> str | None:
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)


VerifierSpecModel = Annotated[
    Annotated[TableSpec, Tag("table")]
    | Annotated[TestsSpec, Tag("tests")]
    | Annotated[AnswerSpec, Tag("answer")]
    | Annotated[PythonSpec, Tag("python")],
    Discriminator(_kind),
]
VERIFIER_SPEC = TypeAdapter(VerifierSpecModel)


_M = TypeVar("_M", bound=BaseModel)


def parse_spec(spec: dict[str, Any], model: type[_M]) -> _M:
    """`spec` as its typed model, defaults filled in. Raises VerifierSpecError naming the
    field (an unknown one with the fields allowed)."""
    check_fields(spec, set(model.model_fields))
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise VerifierSpecError(err["msg"], ".".join(str(p) for p in err["loc"]) or None) from None


def check_verifier_spec(spec: Any) -> None:
    """What submit runs: the worker's own validation (types, defaults and ranges from the
    models above, then the kind's value checks). Raises VerifierSpecError naming the field."""
    from sdpo_core.verifiers.registry import validate_spec

    validate_spec(spec)


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its local `$defs` references replaced by their definitions."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


VERIFIER_JSON_SCHEMA = inline_schema(VERIFIER_SPEC.json_schema())
