"""Typed verifier specs: one pydantic model per kind (and per mode of `tests`).

They give the field types and defaults that the OpenAPI document shows and that submit
checks first; the verifiers' own `validate_*_spec` functions then check values (ranges,
syntax, regexes), so submit and worker run the same rules.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)

from sdpo_core.verifiers.base import VerifierSpecError

_STRICT = ConfigDict(extra="forbid", strict=True)


class TableSpec(BaseModel):
    """The answer is `key=value` pairs checked against a table (trusted, runs no code)."""

    model_config = _STRICT
    kind: Literal["table"]
    cases: dict[str, str | int] = Field(..., description="Input key -> expected word.")
    max_failures: int = Field(2, description="Failing cases shown in the feedback.")
    max_feedback_chars: int = 2000


class _Sandboxed(BaseModel):
    model_config = _STRICT
    timeout_s: float = Field(6.0, description="Per test, seconds.")
    memory_mb: int = Field(512, description="Address-space limit of each test process.")
    max_feedback_chars: int = 2000


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
    isolation: Literal["attempt", "test"] = Field(
        "attempt",
        description="attempt: all tests in one process, stopping at the first failure, as "
        "LiveCodeBench; test: each test in a fresh process, all run.",
    )


class StdinTestsSpec(_TestsCommon):
    """LiveCodeBench stdin/stdout tests: the program reads input, prints output."""

    mode: Literal["stdin"] = "stdin"
    tests: list[IOTest]
    float_tol: float = Field(0.0, description="Relative tolerance for numbers; 0 = exact.")


class FunctionalTestsSpec(_TestsCommon):
    """LiveCodeBench functional tests: `fn_name` is called with JSON arguments, one per line."""

    mode: Literal["functional"]
    fn_name: str
    tests: list[IOTest]
    float_tol: float = Field(0.0, description="Tolerance for returned numbers; 0 = exact.")


class AssertTestsSpec(_TestsCommon):
    """HumanEval-style test code (`check(candidate)` or bare asserts)."""

    mode: Literal["assert"]
    test: str | None = Field(None, description="Test code; give `test` or `tests`.")
    tests: list[str] | None = Field(None, description="Test snippets, each run on its own.")
    entry_point: str | None = Field(None, description="Function passed to `check`.")
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
    tol: float = Field(1e-6, description="Relative tolerance of `numeric`.")
    abs_tol: float = Field(0.0, description="Absolute tolerance of `numeric`.")
    case_sensitive: bool = True
    reveal_expected: bool = False
    timeout_s: float = 5.0
    max_feedback_chars: int = 2000


class PythonSpec(_Sandboxed):
    """Your own `verify(response)` in Python, run in the sandbox."""

    kind: Literal["python"]
    source: str = Field(..., description="Python source defining verify(response).")
    timeout_s: float = 10.0


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


def check_verifier_spec(spec: Any) -> None:
    """Types (the models above), then values (the verifier's own checks).

    Raises VerifierSpecError naming the field inside the spec.
    """
    from sdpo_core.verifiers.registry import validate_spec

    if isinstance(spec, dict) and isinstance(spec.get("kind"), str):
        try:
            VERIFIER_SPEC.validate_python(spec)
        except ValidationError as exc:
            err = exc.errors()[0]
            if err["type"] == "union_tag_invalid":  # unknown kind or mode: worded below
                validate_spec(spec)
            tags = 2 if spec["kind"] == "tests" else 1  # the union tags lead the location
            loc = [str(p) for p in err["loc"]]
            if len(loc) >= tags and loc[0] in {"table", "tests", "answer", "python"}:
                loc = loc[tags:]
            raise VerifierSpecError(err["msg"], ".".join(loc) or None) from None
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
