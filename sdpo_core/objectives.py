"""What a problem's run aims at (`ProblemSpec.objective`), and when it stops:

- `{"stop": "pass"}` (the default): the first attempt the verifier passes solves it.
- `{"target_score": x}`: the first attempt scoring at least x solves it.
- `{"maximize": true}`: no attempt ends the run; it runs to its budget and keeps the best.

Whatever the objective, the run keeps its best attempt (the highest score, the first of
equals), reported with its index and score.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag

from sdpo_core.types import Verdict

_FORBID = ConfigDict(extra="forbid")


class StopAtPass(BaseModel):
    model_config = _FORBID
    stop: Literal["pass"] = "pass"

    def reached(self, verdict: Verdict) -> bool:
        return verdict.passed


class TargetScore(BaseModel):
    model_config = _FORBID
    target_score: float = Field(..., allow_inf_nan=False, description="Stop at this score.")

    def reached(self, verdict: Verdict) -> bool:
        return verdict.score >= self.target_score


class Maximize(BaseModel):
    model_config = _FORBID
    maximize: Literal[True]

    def reached(self, verdict: Verdict) -> bool:
        return False


_KEYS = {"stop": "pass", "target_score": "target", "maximize": "maximize"}
SHAPES = '{"stop": "pass"}, {"target_score": X} or {"maximize": true}'


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next((_KEYS[k] for k in value if k in _KEYS), None)
    return {StopAtPass: "pass", TargetScore: "target", Maximize: "maximize"}.get(type(value))


def _known(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict) or len(value) != 1 or _kind(value) is None:
        raise ValueError(f"must be one of {SHAPES}")
    return value


Objective = Annotated[
    Annotated[StopAtPass, Tag("pass")]
    | Annotated[TargetScore, Tag("target")]
    | Annotated[Maximize, Tag("maximize")],
    Discriminator(_kind),
    BeforeValidator(_known),
]
AnyObjective = StopAtPass | TargetScore | Maximize
