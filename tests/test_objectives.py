"""Score objectives: stop at the first pass (default), at a target score, or run to the budget
keeping the best; the best attempt (its index, score and text) is reported either way; a
`python` verifier's own score; over HTTP the problem resource carries the best attempt."""

from __future__ import annotations

import pytest

from sdpo_core.contract import AttemptPayload, ExhaustedPayload, SolvedPayload
from sdpo_core.problem import ProblemError, parse_problem
from sdpo_core.solve import solve
from sdpo_core.toy import make_problem


def hard(objective: dict | None, max_attempts: int) -> dict:
    data = make_problem(9001, 6, max_attempts=max_attempts)  # table score: fraction of keys right
    data["sdpo"]["samples_per_step"] = 8
    return {**data, "objective": objective} if objective is not None else data


def run(data: dict, runtime):
    events: list = []
    return solve(parse_problem(data), runtime, on_event=events.append), events


def scores(events) -> list[tuple[int, float, str]]:
    return [(e.index, e.verdict.score, e.text) for e in events if isinstance(e, AttemptPayload)]


@pytest.mark.parametrize(
    ("objective", "field"),
    [
        ({"maximize": False}, "objective.maximize"),
        ({"target_score": "high"}, "objective.target_score"),
        ({"stop": "first"}, "objective.stop"),
        ({"minimize": True}, "objective"),
        ({"stop": "pass", "maximize": True}, "objective"),
        ("pass", "objective"),
    ],
)
def test_a_bad_objective_names_the_field(objective: object, field: str) -> None:
    with pytest.raises(ProblemError) as info:
        parse_problem({**make_problem(1, 2), "objective": objective})
    assert info.value.field == field, info.value


def test_the_default_is_the_first_pass() -> None:
    assert parse_problem(make_problem(1, 2)).objective.model_dump() == {"stop": "pass"}


def test_target_score_stops_at_the_first_attempt_reaching_it(runtime) -> None:
    result, events = run(hard({"target_score": 0.5}, 400), runtime)
    seen = scores(events)
    first = next(i for i, s, _ in seen if s >= 0.5)
    assert result.status == "solved" and result.first_pass_attempt == first
    assert result.score is not None and result.score >= 0.5
    solved = events[-1]
    assert isinstance(solved, SolvedPayload) and solved.attempt_index == first
    assert solved.score == result.score


def test_maximize_runs_to_the_budget_and_keeps_the_best(runtime) -> None:
    result, events = run(hard({"maximize": True}, 24), runtime)
    seen = scores(events)
    assert result.status == "exhausted" and result.attempts == 24 and len(seen) == 24
    best = max(s for _, s, _ in seen)
    index, _, text = next(a for a in seen if a[1] == best)  # the first of equals
    assert (result.best_attempt, result.best_score, result.best_solution) == (index, best, text)
    end = events[-1]
    assert isinstance(end, ExhaustedPayload)
    assert (end.best_attempt, end.best_score, end.best_solution) == (index, best, text)


def test_a_python_verifier_returns_its_own_score() -> None:
    source = (
        "def verify(response):\n"
        "    n = len(response)\n"
        "    return n == 5, f'length {n}', -abs(n - 5) * 1.5\n"
    )
    v = parse_problem({"prompt": "p", "verifier": {"kind": "python", "source": source}})
    verifier = v.verifier.build()
    assert verifier.verify("abc").score == -3.0 and verifier.verify("abcde").passed
    bad = source.replace("-abs(n - 5) * 1.5", "float('nan')")
    v = parse_problem({"prompt": "p", "verifier": {"kind": "python", "source": bad}})
    verdict = v.verifier.build().verify("abc")
    assert not verdict.passed and "finite number" in verdict.details["verifier_error"]


def test_the_optimisation_example_climbs(runtime) -> None:
    """examples/toy_optimize.json: SDPO raises the best score over its budget (it started at
    0.81 and reached 0.96 when measured) and ends with the best attempt, exit status 0."""
    import json

    from tests.conftest import REPO

    data = json.loads((REPO / "examples" / "toy_optimize.json").read_text())
    result, events = run(data, runtime)
    seen = scores(events)
    assert result.status == "exhausted" and result.attempts == data["budget"]["max_attempts"]
    first_batch_best = max(s for _, s, _ in seen[:16])
    assert result.best_score > first_batch_best, (first_batch_best, result.best_score)
    assert result.best_score == max(s for _, s, _ in seen)
