"""The problem spec: validation errors name the field; the documentation matches the code."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from sdpo_core.config import SDPOConfig
from sdpo_core.problem import ProblemError, ProblemSpec, parse_problem
from sdpo_core.toy import HARD_SUITE
from tests.conftest import REPO

DOC = (REPO / "docs" / "problem-format.md").read_text()
GOOD = {"prompt": "q", "verifier": {"kind": "table", "cases": {"a": "1"}}}


def test_doc_examples_are_valid_problems() -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOC, re.S)
    assert blocks
    for block in blocks:
        parse_problem(json.loads(block))


def test_doc_lists_every_sdpo_setting() -> None:
    for name in SDPOConfig.model_fields:
        assert f"`{name}`" in DOC, name


def test_defaults_and_overrides() -> None:
    spec = parse_problem({**GOOD, "sdpo": {"lr": 0.5, "top_k": None}})
    cfg = spec.sdpo_config()
    assert cfg.lr == 0.5 and cfg.top_k is None and cfg.samples_per_step == 16
    assert spec.budget.max_attempts == 512


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"verifier": "table"}, "verifier"),
        ({"verifier": {"kind": "table", "cases": {"a b": "1"}}}, "verifier.cases"),
        ({"budget": {"max_seconds": -1}}, "budget.max_seconds"),
        ({"sdpo": {"teacher_regularization": "none"}}, "sdpo.teacher_regularization"),
        ({"sdpo": {"lr": "fast"}}, "sdpo.lr"),
        ({"sdpo": {"unknown_knob": 1}}, "sdpo.unknown_knob"),
        # LoRA on the output head / embeddings would be silently untrained and unservable
        ({"sdpo": {"target_modules": ["q_proj", "lm_head"]}}, "sdpo.target_modules"),
        ({"sdpo": {"target_modules": ["model.embed_tokens"]}}, "sdpo.target_modules"),
    ],
)
def test_errors_name_the_field(patch: dict, field: str) -> None:
    with pytest.raises(ProblemError) as info:
        parse_problem({**GOOD, **patch})
    assert info.value.field == field
    assert field in str(info.value)


def test_not_an_object() -> None:
    with pytest.raises(ProblemError, match="JSON object"):
        parse_problem([1, 2])


def test_examples_and_hard_suite_are_valid() -> None:
    for problem in HARD_SUITE:
        parse_problem(problem)
    for path in (REPO / "examples").glob("*.json"):
        parse_problem(json.loads(path.read_text()))


def test_stored_spec_keeps_only_the_overrides_given() -> None:
    """What the worker reads back applies the user's overrides over the worker's model
    defaults: fields the user left out stay unset (a null default like top_k's is a value)."""
    spec = parse_problem({**GOOD, "sdpo": {"lr": 0.5, "top_k": None}})
    stored = spec.model_dump_json()
    assert json.loads(stored)["sdpo"] == {"lr": 0.5, "top_k": None}
    back = ProblemSpec.from_stored(stored)
    model_defaults = SDPOConfig(lora_rank=8, samples_per_step=4)
    cfg = back.sdpo_config(model_defaults)
    assert (cfg.lr, cfg.top_k, cfg.lora_rank, cfg.samples_per_step) == (0.5, None, 8, 4)
    assert back.verifier.build().verify("a=1").passed


def test_stored_spec_is_parsed_not_checked_again() -> None:
    """Validated once: the value checks (compiling sources) run at submit, not on read-back;
    types are still parsed into the typed spec."""
    source = "def verify(response):\n    return True\n"
    spec = parse_problem({"prompt": "p", "verifier": {"kind": "python", "source": source}})
    data = json.loads(spec.model_dump_json())
    data["verifier"]["source"] = "def verify(:"  # would fail the submit check
    with pytest.raises(ProblemError) as info:
        parse_problem(data)
    assert info.value.field == "verifier.source"
    back = ProblemSpec.from_stored(json.dumps(data))
    assert back.verifier.kind == "python" and back.verifier.source == "def verify(:"
    data["verifier"]["timeout_s"] = "soon"  # a wrong type is still refused
    with pytest.raises(ValidationError):
        ProblemSpec.from_stored(json.dumps(data))


def test_with_sdpo_adds_an_override_and_keeps_the_others() -> None:
    spec = parse_problem({**GOOD, "sdpo": {"lr": 0.5}})
    seeded = spec.with_sdpo(seed=7)
    assert seeded.sdpo.model_dump(exclude_unset=True) == {"lr": 0.5, "seed": 7}
    assert spec.sdpo.model_dump(exclude_unset=True) == {"lr": 0.5}  # a copy
    with pytest.raises(ValidationError):
        spec.with_sdpo(seed=-1)


def test_doc_budget_ranges_are_the_specs_and_the_servers() -> None:
    """problem-format.md states the spec's budget ranges and the server's default limits, and
    both are what the code has."""
    from sdpo_core.problem import Budget
    from service.settings import Settings

    def le(name: str) -> float:
        return next(m.le for m in Budget.model_fields[name].metadata if hasattr(m, "le"))

    attempts = re.search(
        r"`budget.max_attempts` \| int, 1 \.\. ([\d,]+) .*?default ([\d,]+)\)", DOC
    )
    seconds = re.search(
        r"`budget.max_seconds` \| number, > 0, <= ([\d,]+) .*?default ([\d,]+)\)", DOC
    )
    assert attempts and seconds
    number = lambda text: float(text.replace(",", ""))  # noqa: E731
    assert number(attempts[1]) == le("max_attempts")
    assert number(seconds[1]) == le("max_seconds")
    assert number(attempts[2]) == Settings.model_fields["max_budget_attempts"].default
    assert number(seconds[2]) == Settings.model_fields["max_budget_seconds"].default
