"""The wire contract: problem statuses and the SSE event kinds with their fields.

Defined once, with no dependency but pydantic: the service and the worker import it as
`sdpo_core.contract`; the SDK ships a byte-identical copy as `sdpo_client.contract`
(tests/test_contract.py checks they are the same file, and that the dashboard agrees).
Event models accept unknown fields, so an older client reads a newer service's events.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["queued", "running", "solved", "exhausted", "cancelled", "failed"]
STATUSES: tuple[str, ...] = get_args(Status)
TERMINAL_STATUSES: frozenset[str] = frozenset({"solved", "exhausted", "cancelled", "failed"})
ExhaustedReason = Literal["max_attempts", "max_seconds"]
# How a problem is attacked: test-time SDPO, or a baseline to compare it with
# (sdpo_core/methods.py says what each does).
Method = Literal["sdpo", "best_of_k", "multi_turn"]
METHODS: tuple[str, ...] = get_args(Method)


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow")


class VerdictPayload(_Payload):
    """The verifier's judgement of one attempt."""

    passed: bool
    score: float
    feedback: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class StatusPayload(_Payload):
    """The problem changed status (a worker took it, resumed it, or handed it back)."""

    kind: Literal["status"] = "status"
    status: Status
    worker: str | None = None
    resumed: bool | None = None
    reason: str | None = None


class AttemptPayload(_Payload):
    """One generated attempt and its verdict."""

    kind: Literal["attempt"] = "attempt"
    index: int
    step: int
    text: str
    verdict: VerdictPayload
    num_tokens: int


class StepPayload(_Payload):
    """One SDPO step finished: a new adapter version and the step's metrics."""

    kind: Literal["step"] = "step"
    step: int
    attempts: int
    adapter_version: int
    metrics: dict[str, Any] = Field(default_factory=dict)


class SolvedPayload(_Payload):
    """The objective was reached (a passing attempt, or one at the target score)."""

    kind: Literal["solved"] = "solved"
    attempt_index: int
    solution: str
    attempts: int
    steps: int
    seconds: float
    score: float | None = None  # the solving attempt's score


class ExhaustedPayload(_Payload):
    """The budget ran out (with `{"maximize": true}`, the normal end): the best attempt."""

    kind: Literal["exhausted"] = "exhausted"
    reason: ExhaustedReason
    attempts: int
    steps: int
    seconds: float
    best_score: float
    best_attempt: int | None = None  # index of the best attempt (the first of equals)
    best_solution: str | None = None  # its text


class CancelledPayload(_Payload):
    kind: Literal["cancelled"] = "cancelled"
    attempts: int = 0
    steps: int = 0


class FailedPayload(_Payload):
    kind: Literal["failed"] = "failed"
    error: str | None = None
    attempts: int = 0
    steps: int = 0


PAYLOADS: dict[str, type[_Payload]] = {
    m.model_fields["kind"].default: m
    for m in (
        StatusPayload,
        AttemptPayload,
        StepPayload,
        SolvedPayload,
        ExhaustedPayload,
        CancelledPayload,
        FailedPayload,
    )
}
EVENT_KINDS: tuple[str, ...] = tuple(PAYLOADS)


# ---------------------------------------------------------------------- suites
# A suite runs each (problem, method, seed) as an ordinary problem; its report is computed
# from those problems whenever it is read (sdpo_core/discovery_stats.py).


class SuiteRun(_Payload):
    """One (problem, method, seed) of a suite: an ordinary problem, `problem_id`."""

    problem: int  # index of the problem in the suite (0-based)
    method: Method
    seed: int
    problem_id: str
    status: Status | Literal["expired"]
    attempts: int = 0
    budget: int  # its max_attempts: an unsolved run counts at it
    solved_attempt: int | None = None


class MethodSummary(_Payload):
    """A method's runs so far. Discovery@k and the mean count finished runs only."""

    runs: int
    finished: int
    solved: int
    discovery_at_k: dict[int, float] = Field(default_factory=dict)
    mean_attempts: float | None = None  # unsolved runs counted at their budget
    ratio_to_sdpo: float | None = None  # mean_attempts / sdpo's: > 1 means SDPO is faster


class SuiteProblemRow(_Payload):
    """One problem of the suite: each method's mean attempts over its finished seeds."""

    problem: int
    mean_attempts: dict[str, float | None]
    solved: dict[str, int]


TERMINAL_EVENTS: frozenset[str] = TERMINAL_STATUSES  # the event that ends a stream


class SuiteReport(_Payload):
    """A suite and its aggregate, recomputed from its problems whenever it is read."""

    id: str
    name: str | None = None
    status: Literal["running", "done"]  # done: every run finished (or expired)
    model: str
    methods: list[Method]
    seeds: int
    problems: int
    total: int  # runs: problems x methods x seeds
    done: int
    cancel_requested: bool = False
    summary: dict[str, MethodSummary] = Field(default_factory=dict)
    table: list[SuiteProblemRow] = Field(default_factory=list)
    runs: list[SuiteRun] = Field(default_factory=list)
