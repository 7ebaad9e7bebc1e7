"""Verifiers: turn a response into a Verdict (passed, score, feedback, details).

Public API:
    parse_verifier(data) -> spec      # typed; raises VerifierSpecError naming the field
    spec.build() -> Verifier          # each kind's spec builds its verifier
    build_verifier(spec or data) -> Verifier
"""

from __future__ import annotations

from sdpo_core.verifiers.base import Verifier, VerifierSpecError
from sdpo_core.verifiers.specs import (
    AnyVerifierSpec,
    VerifierSpec,
    build_verifier,
    parse_verifier,
)

__all__ = [
    "AnyVerifierSpec",
    "Verifier",
    "VerifierSpec",
    "VerifierSpecError",
    "build_verifier",
    "parse_verifier",
]
