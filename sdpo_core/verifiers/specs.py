"""The verifier spec: a discriminated union of the kinds' typed specs (by `kind`, and for
`tests` by `mode`).

It is the run-time object: a problem's `verifier` is validated into it once (at submit, or
when `sdpo solve` reads the file) and each spec builds its own verifier (`spec.build()`).
A new kind is one `SpecBase` subclass with a `kind` literal, `check` and `build`, added to
`VerifierSpec` below.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Discriminator, Tag, TypeAdapter, ValidationError

from sdpo_core.verifiers.base import STORED, SpecBase, Verifier, VerifierSpecError
from sdpo_core.verifiers.kinds.answer import AnswerSpec
from sdpo_core.verifiers.kinds.python import PythonSpec
from sdpo_core.verifiers.kinds.table import TableSpec
from sdpo_core.verifiers.kinds.tests import (
    TEST_MODES,
    AssertTestsSpec,
    FunctionalTestsSpec,
    StdinTestsSpec,
    TestsSpec,
)

KINDS = ("table", "tests", "answer", "python")


def _kind(value: Any) -> str | None:
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)


def _known_kind(value: Any) -> Any:
    """Name the field of a missing or unknown `kind` / `mode` (the union's own error would
    say only that no tag matched)."""
    if isinstance(value, SpecBase):
        return value
    if not isinstance(value, dict):
        raise VerifierSpecError("must be a JSON object")
    kind = value.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise VerifierSpecError(f"unknown kind {kind!r}; one of {sorted(KINDS)}", "kind")
    mode = value.get("mode", "stdin")
    if kind == "tests" and (not isinstance(mode, str) or mode not in TEST_MODES):
        raise VerifierSpecError(f"must be one of {list(TEST_MODES)}", "mode")
    return value


VerifierSpec = Annotated[
    Annotated[TableSpec, Tag("table")]
    | Annotated[TestsSpec, Tag("tests")]
    | Annotated[AnswerSpec, Tag("answer")]
    | Annotated[PythonSpec, Tag("python")],
    Discriminator(_kind),
    BeforeValidator(_known_kind),
]
AnyVerifierSpec = (
    TableSpec | StdinTestsSpec | FunctionalTestsSpec | AssertTestsSpec | AnswerSpec | PythonSpec
)
VERIFIER_SPEC: TypeAdapter[AnyVerifierSpec] = TypeAdapter(VerifierSpec)


def error_field(loc: tuple[int | str, ...], data: Any) -> str:
    """A validation error's location inside a verifier spec as the user wrote it: the
    union's tags (the kind, then the mode of `tests`) are not fields."""
    parts = list(loc)
    if parts and parts[0] in KINDS and parts[0] == _kind(data):
        parts.pop(0)
        if parts and parts[0] in TEST_MODES and _kind(data) == "tests":
            parts.pop(0)
    return ".".join(str(p) for p in parts)


def spec_error(exc: ValidationError, data: Any) -> VerifierSpecError:
    """The first error of validating `data` as a verifier spec, naming its field."""
    err = exc.errors()[0]
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, VerifierSpecError):  # raised by a check: it knows its field
        return inner
    where = error_field(err["loc"], data)
    return VerifierSpecError(err["msg"].removeprefix("Value error, "), where or None)


def parse_verifier(data: Any, *, stored: bool = False) -> AnyVerifierSpec:
    """`data` (the "verifier" object of a problem) as its typed spec, defaults filled in.
    Raises VerifierSpecError naming the field. `stored`: it passed submit; parse types only."""
    try:
        return VERIFIER_SPEC.validate_python(data, context={STORED: stored})
    except ValidationError as exc:
        raise spec_error(exc, data) from None


def build_verifier(spec: Any) -> Verifier:
    """A verifier for a typed spec, or for a spec object (validated first)."""
    typed = spec if isinstance(spec, AnyVerifierSpec) else parse_verifier(spec)
    return typed.build()


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
