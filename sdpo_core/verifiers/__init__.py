"""Verifiers: turn a response into a Verdict (passed, score, feedback, details).

Public API:
    build_verifier(spec) -> Verifier      # spec: the "verifier" object of a problem JSON
    validate_spec(spec)                   # raises VerifierSpecError naming the field; runs nothing
"""

from __future__ import annotations

from sdpo_core.verifiers.base import Verifier, VerifierSpecError
from sdpo_core.verifiers.registry import build_verifier, validate_spec

__all__ = ["Verifier", "VerifierSpecError", "build_verifier", "validate_spec"]
