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


def _digest(directory) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_the_best_attempts_adapter_is_kept_and_survives_a_resume(runtime, tmp_path) -> None:
    """best_adapter/ holds the adapter version that sampled the best attempt (the files of
    adapter/ as that version was published), with best.json; a run stopped between sampling
    and its update and resumed keeps the same best adapter, recorded in its checkpoint."""
    import json

    import torch

    from sdpo_core.best_adapter import BEST_ADAPTER_INFO
    from sdpo_core.contract import StepPayload

    published: dict[int, dict[str, str]] = {}

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, StepPayload):
            published[event.adapter_version] = _digest(tmp_path / "a" / "adapter")

    events: list = []
    data = {**make_problem(9001, 4, max_attempts=40), "objective": {"maximize": True}}
    data["sdpo"]["samples_per_step"] = 8
    result = solve(parse_problem(data), runtime, on_event=on_event, checkpoint_dir=tmp_path / "a")
    step_of = {e.index: e.step for e in events if isinstance(e, AttemptPayload)}
    info = json.loads((tmp_path / "a" / "best_adapter" / BEST_ADAPTER_INFO).read_text())
    version = step_of[result.best_attempt]  # attempts of step s come from adapter version s
    assert info == {
        "attempt": result.best_attempt,
        "score": result.best_score,
        "adapter_version": version,
    }
    assert version > 0, "this problem's best attempt came from a trained adapter when measured"
    kept = _digest(tmp_path / "a" / "best_adapter")
    assert kept.pop(BEST_ADAPTER_INFO) and kept == published[version]

    seen: list = []
    stop = lambda: sum(isinstance(e, AttemptPayload) for e in seen) >= 24  # noqa: E731
    first = solve(
        parse_problem(data),
        runtime,
        on_event=seen.append,
        checkpoint_dir=tmp_path / "b",
        should_stop=stop,
    )
    assert first.status == "stopped"
    again = solve(parse_problem(data), runtime, checkpoint_dir=tmp_path / "b")
    assert (again.best_attempt, again.best_score) == (result.best_attempt, result.best_score)
    assert _digest(tmp_path / "b" / "best_adapter") == _digest(tmp_path / "a" / "best_adapter")
    current = (tmp_path / "b" / "CURRENT").read_text().strip()
    state = torch.load(tmp_path / "b" / "ckpt" / current / "state.pt", weights_only=False)
    assert state["best_adapter_version"] == version and state["best_attempt"] == result.best_attempt


def test_a_best_attempt_of_the_base_model_has_no_adapter_to_keep(runtime, tmp_path) -> None:
    import json

    from sdpo_core.best_adapter import BEST_ADAPTER_INFO

    result, _ = run(hard({"maximize": True}, 8), runtime)  # one batch: the base model's
    solve(parse_problem(hard({"maximize": True}, 8)), runtime, checkpoint_dir=tmp_path)
    best = tmp_path / "best_adapter"
    assert sorted(p.name for p in best.iterdir()) == [BEST_ADAPTER_INFO]
    info = json.loads((best / BEST_ADAPTER_INFO).read_text())
    assert info == {
        "attempt": result.best_attempt,
        "score": result.best_score,
        "adapter_version": 0,
    }
