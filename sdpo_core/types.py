"""Plain data types shared by every part of sdpo_core (and read by service/)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sdpo_core.contract import (
    AttemptPayload,
    ExhaustedPayload,
    FailedPayload,
    SolvedPayload,
    StepPayload,
)


@dataclass(frozen=True)
class Verdict:
    """What a verifier says about one response.

    passed:   the response solves the problem.
    score:    fraction of tests passed, in [0, 1].
    feedback: text the self-teacher reads ("" when there is nothing to say).
    details:  per-test outcomes and anything else machine-readable.
    """

    passed: bool
    score: float
    feedback: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SamplingParams:
    n: int = 16
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """One sampled response.

    token_ids: the response tokens (no prompt), ending with EOS when the model stopped.
    logprobs:  the sampler's log-prob of each token in token_ids (same length),
               under the sampling distribution at temperature 1 (raw model log-probs).
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"] = "stop"


# The solve loop reports progress through a callback that receives the wire contract's
# payloads (sdpo_core/contract.py): the service writes them as they are.
SolveEvent = AttemptPayload | StepPayload | SolvedPayload | ExhaustedPayload | FailedPayload


@dataclass(frozen=True)
class SolveResult:
    # "stopped": the caller's should_stop() said so (cancel or shutdown; the caller knows which
    # and reports it); solve emits no terminal event then.
    status: Literal["solved", "exhausted", "stopped", "failed"]
    solved: bool
    attempts: int  # attempts made in total
    first_pass_attempt: int | None  # index of the first passing attempt (discovery time)
    solution: str | None
    best_score: float
    steps: int
    seconds: float
    adapter_version: int
    error: str | None = None
    score: float | None = None  # the solving attempt's score
    best_attempt: int | None = None  # the best attempt (highest score, first of equals)
    best_solution: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
