"""The problem spec: the JSON that `sdpo solve` reads and `POST /v1/problems` accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

from sdpo_core.config import SDPOConfig
from sdpo_core.verifiers.models import VERIFIER_JSON_SCHEMA, inline_schema

# Kept as plain dicts at run time (the verifiers take dicts); typed in the schema and checked
# against the typed models on validation.
VerifierField = Annotated[dict[str, Any], WithJsonSchema(VERIFIER_JSON_SCHEMA)]
SDPOOverrides = Annotated[
    dict[str, Any],
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
    sdpo: SDPOOverrides = Field(default_factory=dict, description="Overrides of SDPO settings.")
    model: str | None = Field(None, description="Model name; null = the worker's model.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("sdpo")
    @classmethod
    def _check_sdpo(cls, value: dict[str, Any]) -> dict[str, Any]:
        SDPOConfig().merged(value)  # raises ValidationError naming the field
        return value

    @field_validator("verifier")
    @classmethod
    def _check_verifier(cls, value: dict[str, Any]) -> dict[str, Any]:
        from sdpo_core.verifiers import VerifierSpecError
        from sdpo_core.verifiers.models import check_verifier_spec

        try:
            check_verifier_spec(value)
        except VerifierSpecError as exc:
            raise ValueError(str(exc)) from exc
        return value

    def sdpo_config(self, base: SDPOConfig | None = None) -> SDPOConfig:
        return (base or SDPOConfig()).merged(self.sdpo)


def _first_error(exc: ValidationError) -> ProblemError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    nested = re.match(r"^(verifier(?:\.[^:\s]+)?): (.*)$", msg, re.S)
    if nested:  # a VerifierSpecError: it knows the field inside the spec
        loc, msg = nested.groups()
    return ProblemError(msg, field=loc or None)


def parse_problem(data: Any) -> ProblemSpec:
    """Validate a decoded JSON object; raise ProblemError naming the first bad field."""
    if not isinstance(data, dict):
        raise ProblemError("a problem must be a JSON object")
    try:
        return ProblemSpec.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None


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
