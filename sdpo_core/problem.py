"""The problem spec: the JSON that `sdpo solve` reads and `POST /v1/problems` accepts.

`ProblemSpec` is also the run-time object: it is validated once (at submit, or when `sdpo
solve` reads a file), stored as JSON, and read back by the worker with `from_stored` (types
only: the checks that compile sources ran at submit). Its `verifier` is the typed spec of
its kind (`spec.verifier.build()` makes the verifier); its `sdpo` the overrides, typed like
SDPOConfig, that `sdpo_config` applies over the model's defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_serializer,
    model_validator,
)

from sdpo_core.config import SDPOConfig, SDPOOverrides
from sdpo_core.methods import Method
from sdpo_core.objectives import Objective, StopAtPass
from sdpo_core.verifiers.base import STORED, VerifierSpecError
from sdpo_core.verifiers.specs import (
    VERIFIER_JSON_SCHEMA,
    VerifierSpec,
    error_field,
    inline_schema,
)

# The OpenAPI document shows each field's schema inline (as it did before these were typed).
VerifierField = Annotated[VerifierSpec, WithJsonSchema(VERIFIER_JSON_SCHEMA)]
SDPOField = Annotated[
    SDPOOverrides,  # type: ignore[valid-type]
    WithJsonSchema({**inline_schema(SDPOConfig.model_json_schema()), "title": "SDPOOverrides"}),
]


class ProblemError(ValueError):
    """A problem spec is invalid. `field` is the dotted path of the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(512, ge=1, le=1_000_000, description="Generations before giving up.")
    max_seconds: float = Field(3600.0, gt=0, le=7 * 24 * 3600, description="Wall-clock limit.")


class ProblemSpec(BaseModel):
    """One problem: what to ask, how to check an answer, and how much to spend."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, description="The question, as the user message.")
    verifier: VerifierField = Field(..., description="Verifier spec, by `kind`.")
    budget: Budget = Field(default_factory=Budget)
    method: Method = Field(
        "sdpo",
        description="sdpo: test-time SDPO; best_of_k: independent samples from the base "
        "model; multi_turn: conversations in which each attempt sees its earlier feedback.",
    )
    objective: Objective = Field(  # type: ignore[valid-type]
        default_factory=StopAtPass,
        description='When the run stops: {"stop": "pass"} (the first passing attempt), '
        '{"target_score": x} (the first attempt scoring at least x) or {"maximize": true} '
        "(run to the budget, keep the best).",
    )
    sdpo: SDPOField = Field(  # type: ignore[valid-type]
        default_factory=SDPOOverrides, description="Overrides of SDPO settings."
    )
    model: str | None = Field(None, description="Model name; null = the worker's model.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_serializer("sdpo")
    def _only_set(self, value: BaseModel) -> dict[str, Any]:
        # Unset fields stay unset, so a worker's model defaults apply to what the user left out.
        return value.model_dump(mode="json", exclude_unset=True)

    @model_validator(mode="after")
    def _whole_config(self, info: ValidationInfo) -> ProblemSpec:
        if not (info.context or {}).get(STORED):
            self.sdpo_config()  # rules across settings hold for the overrides as a whole
        return self

    def with_sdpo(self, **overrides: Any) -> ProblemSpec:
        """A copy whose `sdpo` block also sets `overrides` (validated like a submit's)."""
        given = self.sdpo.model_dump(exclude_unset=True)
        merged = SDPOOverrides.model_validate({**given, **overrides})
        return self.model_copy(update={"sdpo": merged})

    def sdpo_config(self, base: SDPOConfig | None = None) -> SDPOConfig:
        """`base` (the model's defaults; the generic ones if None) with this problem's
        overrides applied."""
        return (base or SDPOConfig()).merged(self.sdpo)

    @classmethod
    def from_stored(cls, text: str | bytes) -> ProblemSpec:
        """A spec stored after submit: parse types only (its checks ran at submit)."""
        return cls.model_validate_json(text, context={STORED: True})


def _first_error(exc: ValidationError, data: dict[str, Any]) -> ProblemError:
    err = exc.errors()[0]
    loc = err["loc"]
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, VerifierSpecError):  # a check inside the spec: it knows the field
        return ProblemError(inner.message, field=inner.field)
    if len(loc) > 2 and loc[0] == "objective":  # the union's tag is not a field
        loc = (loc[0], *loc[2:])
    if loc and loc[0] == "verifier":
        inside = error_field(loc[1:], data.get("verifier"))
        field = f"verifier.{inside}" if inside else "verifier"
    else:
        field = ".".join(str(p) for p in loc)
    return ProblemError(err["msg"].removeprefix("Value error, "), field=field or None)


def parse_problem(data: Any) -> ProblemSpec:
    """Validate a decoded JSON object; raise ProblemError naming the first bad field."""
    if not isinstance(data, dict):
        raise ProblemError("a problem must be a JSON object")
    try:
        return ProblemSpec.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, data) from None


def load_problem(path: str | Path) -> ProblemSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProblemError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProblemError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    return parse_problem(data)
