"""Every verifier field with a wrong type is rejected at parse (= at submit), naming the field;
whatever passes parse builds a verifier (what the worker does), so nothing fails later."""

from __future__ import annotations

import pytest

from sdpo_core.problem import ProblemError, parse_problem
from sdpo_core.verifiers import build_verifier
from sdpo_core.verifiers.kinds.answer import AnswerSpec
from sdpo_core.verifiers.kinds.python import PythonSpec
from sdpo_core.verifiers.kinds.table import TableSpec
from sdpo_core.verifiers.kinds.tests import AssertTestsSpec, FunctionalTestsSpec, StdinTestsSpec

VALID = [
    (TableSpec, {"kind": "table", "cases": {"a": "1"}}),
    (StdinTestsSpec, {"kind": "tests", "tests": [{"input": "1", "output": "1"}]}),
    (
        FunctionalTestsSpec,
        {
            "kind": "tests",
            "mode": "functional",
            "fn_name": "f",
            "tests": [{"input": "1", "output": "2"}],
        },
    ),
    (AssertTestsSpec, {"kind": "tests", "mode": "assert", "test": "assert True"}),
    (AnswerSpec, {"kind": "answer", "expected": "4"}),
    (PythonSpec, {"kind": "python", "source": "def verify(response):\n    return True\n"}),
]
# One value of each JSON type, plus out-of-range and awkward ones.
POOL = [
    "abc",
    "",
    " ",
    0,
    -1,
    7,
    10**9,
    1.5,
    float("inf"),
    True,
    False,
    None,
    [],
    [1],
    {},
    {"x": 1},
    ["assert True"],
    [{"input": "1", "output": "1"}],
    "assert True",
]


def _cases():
    for model, base in VALID:
        for field in model.model_fields:
            if field in ("kind", "mode"):
                continue
            for value in POOL:
                yield pytest.param(
                    base, field, value, id=f"{base['kind']}-{model.__name__}-{field}-{value!r}"[:80]
                )


@pytest.mark.parametrize(("base", "field", "value"), list(_cases()))
def test_wrong_field_rejected_at_parse_or_builds(base: dict, field: str, value: object) -> None:
    spec = {**base, field: value}
    if field == "tests" and "test" in spec and spec.get("mode") == "assert":
        del spec["test"]  # assert mode takes test or tests, not both
    try:
        parse_problem({"prompt": "p", "verifier": spec})
    except ProblemError as exc:
        assert exc.field and exc.field.startswith("verifier"), exc
        return
    build_verifier(spec)  # passes submit -> the worker accepts it too


@pytest.mark.parametrize(("model", "base"), VALID)
def test_string_where_a_number_or_bool_is_named(model: type, base: dict) -> None:
    for name, info in model.model_fields.items():
        if info.annotation in (int, float, bool):
            with pytest.raises(ProblemError) as err:
                parse_problem({"prompt": "p", "verifier": {**base, name: "abc"}})
            assert err.value.field == f"verifier.{name}"


def test_the_reported_table_typo() -> None:
    spec = {"kind": "table", "cases": {"a": "1"}, "max_feedback_chars": "abc"}
    with pytest.raises(ProblemError) as err:
        parse_problem({"prompt": "p", "verifier": spec})
    assert err.value.field == "verifier.max_feedback_chars"


# A valid value other than the default, for every field that has a default: a new field
# fails the test below until it is listed here (and read by its verifier).
OTHER = {
    "max_failures": 3,
    "max_feedback_chars": 3000,
    "timeout_s": 2.5,
    "memory_mb": 256,
    "stop_after_timeout": False,
    "isolation": "test",
    "code_extraction": "livecodebench",
    "float_tol": 0.5,
    "match": "numeric",
    "tol": 0.01,
    "abs_tol": 0.1,
    "case_sensitive": False,
    "reveal_expected": True,
}
CONTENT = {"mode", "test", "tests", "entry_point", "prefix"}  # the problem itself, not a knob


@pytest.mark.parametrize(("model", "base"), VALID)
def test_verifiers_use_the_models_defaults_and_values(model: type, base: dict) -> None:
    """The typed models are the one place of each default: a verifier built from the
    minimal spec has the model's defaults, and one built with other values has those."""
    knobs = {
        name: info
        for name, info in model.model_fields.items()
        if not info.is_required() and name not in CONTENT
    }
    assert knobs, model
    built = build_verifier(dict(base))
    for name, info in knobs.items():
        assert getattr(built, name) == info.get_default(call_default_factory=True), name
    other = {name: OTHER[name] for name in knobs}
    assert all(other[n] != info.default for n, info in knobs.items())
    parse_problem({"prompt": "p", "verifier": {**base, **other}})  # passes submit...
    built = build_verifier({**base, **other})  # ...and the worker builds it with them
    for name, value in other.items():
        assert getattr(built, name) == value, name
