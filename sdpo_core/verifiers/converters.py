"""Benchmark records -> problem dicts, with the verifier spec checked (sdpo_core/records.py
converts; the SDK ships the same file)."""

from __future__ import annotations

from typing import Any

from sdpo_core import records
from sdpo_core.records import HUMANEVAL_FORMAT, LCB_FUNCTIONAL_FORMAT, LCB_STDIN_FORMAT
from sdpo_core.verifiers.specs import parse_verifier

__all__ = [
    "HUMANEVAL_FORMAT",
    "LCB_FUNCTIONAL_FORMAT",
    "LCB_STDIN_FORMAT",
    "humaneval_problem",
    "livecodebench_problem",
]


def livecodebench_problem(record: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A problem dict from a LiveCodeBench record (public + private tests)."""
    problem = records.livecodebench_problem(record, **kwargs)
    parse_verifier(problem["verifier"])
    return problem


def humaneval_problem(record: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A problem dict from a HumanEval record: assert mode, the record's prompt as prefix."""
    problem = records.humaneval_problem(record, **kwargs)
    parse_verifier(problem["verifier"])
    return problem
