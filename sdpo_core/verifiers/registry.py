"""Spec kind -> validator and verifier class. New kinds register here."""

from __future__ import annotations

from typing import Any

from sdpo_core.verifiers.answer import AnswerVerifier, validate_answer_spec
from sdpo_core.verifiers.base import Verifier, VerifierSpecError
from sdpo_core.verifiers.custom import PythonVerifier, validate_python_spec
from sdpo_core.verifiers.table import TableVerifier, validate_table_spec
from sdpo_core.verifiers.testcases import TestsVerifier, validate_tests_spec

_VALIDATORS = {
    "table": validate_table_spec,
    "tests": validate_tests_spec,
    "answer": validate_answer_spec,
    "python": validate_python_spec,
}
_BUILDERS = {
    "table": TableVerifier,
    "tests": TestsVerifier,
    "answer": AnswerVerifier,
    "python": PythonVerifier,
}


def validate_spec(spec: Any) -> Any:
    """Check a verifier spec without running anything; raise VerifierSpecError naming the
    field. Returns the typed spec (sdpo_core/verifiers/models.py), defaults filled in."""
    if not isinstance(spec, dict):
        raise VerifierSpecError("must be a JSON object")
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in _VALIDATORS:
        raise VerifierSpecError(f"unknown kind {kind!r}; one of {sorted(_VALIDATORS)}", "kind")
    return _VALIDATORS[kind](spec)


def build_verifier(spec: Any) -> Verifier:
    """A verifier for `spec` (each builder validates it: the typed model, then values).
    Building starts nothing; the sandbox starts on first use."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if not isinstance(kind, str) or kind not in _BUILDERS:
        validate_spec(spec)  # raises, naming the kind
    return _BUILDERS[spec["kind"]](spec)
