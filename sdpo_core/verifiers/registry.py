"""Spec kind -> verifier class. New kinds register here."""

from __future__ import annotations

from typing import Any

from sdpo_core.verifiers.base import Verifier, VerifierSpecError
from sdpo_core.verifiers.table import TableVerifier, validate_table_spec

_VALIDATORS = {"table": validate_table_spec}
_BUILDERS = {"table": TableVerifier}


def validate_spec(spec: Any) -> None:
    if not isinstance(spec, dict):
        raise VerifierSpecError("must be a JSON object")
    kind = spec.get("kind")
    if kind not in _VALIDATORS:
        raise VerifierSpecError(f"unknown kind {kind!r}; one of {sorted(_VALIDATORS)}", "kind")
    _VALIDATORS[kind](spec)


def build_verifier(spec: Any) -> Verifier:
    validate_spec(spec)
    return _BUILDERS[spec["kind"]](spec)
