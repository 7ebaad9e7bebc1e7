"""Typed models of the service's resources and of each SSE event type."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from sdpo_client import contract
from sdpo_client.contract import (
    EVENT_KINDS,
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    ExhaustedReason,
    Status,
)


class _Model(BaseModel):
    # Unknown fields from a newer service are kept, not rejected.
    model_config = ConfigDict(extra="allow")


class Budget(_Model):
    max_attempts: int = 512
    max_seconds: float = 3600.0


class ProblemSpec(_Model):
    """What was submitted: the prompt, the verifier spec, the budget and SDPO overrides."""

    prompt: str
    verifier: dict[str, Any]
    budget: Budget = Field(default_factory=Budget)
    method: str = "sdpo"  # one of contract.METHODS (a newer server may have more)
    # {"stop": "pass"}, {"target_score": x} or {"maximize": true}
    objective: dict[str, Any] = Field(default_factory=lambda: {"stop": "pass"})
    sdpo: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Problem(_Model):
    """A submitted problem and its progress (GET /v1/problems/{id})."""

    id: str
    status: Status
    model: str
    attempts: int
    steps: int
    best_score: float | None = None
    best_attempt: int | None = None  # the best attempt so far (with a score objective)
    best_solution: str | None = None
    solved_attempt: int | None = None
    solution: str | None = None
    error: str | None = None
    exhausted_reason: ExhaustedReason | None = None
    adapter_version: int = 0
    cancel_requested: bool = False
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    suite: str | None = None  # the suite this problem is a run of
    worker: str | None = None  # the worker that runs it (or ran it last)
    spec: ProblemSpec

    @property
    def done(self) -> bool:
        """True once the problem is solved, exhausted, cancelled or failed."""
        return self.status in TERMINAL_STATUSES

    @property
    def solved(self) -> bool:
        return self.status == "solved"


Verdict = contract.VerdictPayload  # the verifier's judgement of one attempt


class Suite(_Model, contract.SuiteReport):
    """A suite and its discovery report (GET /v1/suites/{id}): progress (`done` of `total`),
    each method's `summary` (discovery@k, mean attempts, ratio to SDPO), the per-problem
    `table` and every run (an ordinary problem, `problem_id`)."""

    created_at: datetime

    @property
    def finished(self) -> bool:
        """True once every run has finished."""
        return self.status == "done"


class Attempt(_Model):
    """One attempt record (GET /v1/problems/{id}/attempts)."""

    index: int
    step: int
    text: str
    passed: bool
    score: float
    feedback: str
    num_tokens: int
    created_at: datetime

    @property
    def verdict(self) -> Verdict:
        return Verdict(passed=self.passed, score=self.score, feedback=self.feedback)


# ------------------------------------------------------------------------ events
# Each event's fields are the wire contract's (sdpo_client/contract.py); `id` is added here.
class _Event(_Model):
    id: str = Field(..., description="The SSE event id (a Redis stream id); resume after it.")

    @property
    def terminal(self) -> bool:
        """True for the event that ends the stream (solved, exhausted, cancelled, failed)."""
        return getattr(self, "kind", "") in TERMINAL_EVENTS

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with `kind` (what `sdpo_cli.progress.ProgressDisplay` consumes)."""
        return self.model_dump(mode="json")


class StatusEvent(_Event, contract.StatusPayload):
    pass


class AttemptEvent(_Event, contract.AttemptPayload):
    pass


class StepEvent(_Event, contract.StepPayload):
    pass


class SolvedEvent(_Event, contract.SolvedPayload):
    pass


class ExhaustedEvent(_Event, contract.ExhaustedPayload):
    pass


class CancelledEvent(_Event, contract.CancelledPayload):
    pass


class FailedEvent(_Event, contract.FailedPayload):
    pass


class UnknownEvent(_Event):
    """An event type this SDK version does not know; `data` holds its payload."""

    kind: str
    data: Any = None


Event = Annotated[
    Union[  # noqa: UP007 (pydantic discriminated unions want typing.Union on 3.10)
        StatusEvent,
        AttemptEvent,
        StepEvent,
        SolvedEvent,
        ExhaustedEvent,
        CancelledEvent,
        FailedEvent,
    ],
    Field(discriminator="kind"),
]
AnyEvent = Union[Event, UnknownEvent]  # noqa: UP007
_EVENT = TypeAdapter(Event)


def parse_event(event_id: str, name: str, data: str) -> AnyEvent:
    """One SSE message (`id:`, `event:`, `data:`) as its typed event."""
    payload = json.loads(data) if data else {}
    if name not in EVENT_KINDS or not isinstance(payload, dict):
        return UnknownEvent(id=event_id, kind=name, data=payload)
    return _EVENT.validate_python({**payload, "id": event_id, "kind": name})
