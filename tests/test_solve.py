"""The solve loop on the bundled model: events, budget, determinism, stop and exact resume."""

from __future__ import annotations

import pytest

from sdpo_core.contract import AttemptPayload, ExhaustedPayload, SolvedPayload, StepPayload
from sdpo_core.problem import parse_problem
from sdpo_core.solve import latest_adapter_dir, solve
from sdpo_core.toy import make_problem
from sdpo_core.verifiers import build_verifier

FAST = {"samples_per_step": 8, "lora_rank": 4, "lr": 2e-3}


def hard(max_attempts: int, **sdpo):
    data = make_problem(9001, 6, max_attempts=max_attempts)
    data["sdpo"].update(FAST, **sdpo)
    return parse_problem(data)


def run(problem, runtime, **kw):
    events = []
    result = solve(problem, runtime, on_event=events.append, **kw)
    return result, events


def attempts_of(events) -> list[tuple[int, str]]:
    return [(e.index, e.text) for e in events if isinstance(e, AttemptPayload)]


def test_budget_events_and_adapter(runtime, tmp_path) -> None:
    result, events = run(hard(20), runtime, checkpoint_dir=tmp_path)
    assert result.status == "exhausted" and result.error == "max_attempts"
    assert result.attempts == 20  # 8 + 8 + 4: the last batch is cut to the budget
    assert [i for i, _ in attempts_of(events)] == list(range(1, 21))
    steps = [e for e in events if isinstance(e, StepPayload)]
    assert [s.step for s in steps] == [1, 2] and [s.adapter_version for s in steps] == [1, 2]
    for key in ("loss", "kl", "grad_norm", "time_generate", "time_verify", "time_export"):
        assert key in steps[0].metrics
    assert isinstance(events[-1], ExhaustedPayload) and events[-1].attempts == 20
    assert latest_adapter_dir(tmp_path) is not None


def test_max_seconds_ends_the_run(runtime) -> None:
    data = make_problem(9001, 6, max_attempts=10_000, max_seconds=0.001)
    result, events = run(parse_problem(data), runtime)
    assert result.status == "exhausted" and result.error == "max_seconds"
    assert isinstance(events[-1], ExhaustedPayload) and events[-1].reason == "max_seconds"


def test_same_seed_same_attempts(runtime) -> None:
    _, a = run(hard(16), runtime)
    _, b = run(hard(16), runtime)
    _, c = run(hard(16, seed=1), runtime)
    assert attempts_of(a) == attempts_of(b)
    assert attempts_of(a) != attempts_of(c)


def test_solves_an_easy_problem_and_stops_at_the_first_pass(runtime) -> None:
    problem = parse_problem(make_problem(42, 1))
    result, events = run(problem, runtime)
    assert result.solved and result.status == "solved"
    solved = events[-1]
    assert isinstance(solved, SolvedPayload) and solved.attempt_index == result.first_pass_attempt
    assert build_verifier(problem.verifier).verify(result.solution).passed
    first_pass = next(e for e in events if isinstance(e, AttemptPayload) and e.verdict.passed)
    assert first_pass.index == result.first_pass_attempt
    assert not any(isinstance(e, StepPayload) for e in events[events.index(first_pass) :])


@pytest.mark.parametrize("stop_after", ["step", "attempts"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    runtime, tmp_path, stop_after
) -> None:
    """Stopped after a finished step, or between sampling and the update (a pending batch):
    resumed, the run makes exactly the attempts of an uninterrupted run, each counted once."""
    _, reference = run(hard(40), runtime)

    seen: list = []

    def should_stop() -> bool:
        steps = sum(isinstance(e, StepPayload) for e in seen)
        attempts = sum(isinstance(e, AttemptPayload) for e in seen)
        return steps >= 2 if stop_after == "step" else attempts >= 24

    first = solve(
        hard(40), runtime, on_event=seen.append, checkpoint_dir=tmp_path, should_stop=should_stop
    )
    assert first.status == "stopped" and first.attempts == (16 if stop_after == "step" else 24)
    resumed: list = []
    second = solve(hard(40), runtime, on_event=resumed.append, checkpoint_dir=tmp_path)
    assert second.status == "exhausted" and second.attempts == 40

    # consumers drop attempt indices they already have (a pending batch is emitted again)
    log = dict(attempts_of(seen))
    for index, text in attempts_of(resumed):
        assert log.setdefault(index, text) == text  # a replayed index has identical content
    assert sorted(log.items()) == attempts_of(reference)
    ref_steps = [e.metrics["loss"] for e in reference if isinstance(e, StepPayload)]
    got_steps = [e.metrics["loss"] for e in seen + resumed if isinstance(e, StepPayload)]
    assert got_steps == pytest.approx(ref_steps, abs=1e-6)


def test_a_finished_run_resumed_reports_its_result_again(runtime, tmp_path) -> None:
    first, _ = run(hard(8), runtime, checkpoint_dir=tmp_path)
    again, events = run(hard(8), runtime, checkpoint_dir=tmp_path)
    assert again == first
    assert [type(e) for e in events] == [ExhaustedPayload]


def test_errors_become_a_failed_result(runtime, tmp_path) -> None:
    problem = hard(8)
    (tmp_path / "ckpt" / "000001").mkdir(parents=True)
    (tmp_path / "ckpt" / "000001" / "state.pt").write_text("not a checkpoint")
    (tmp_path / "CURRENT").write_text("000001\n")
    result, events = run(problem, runtime, checkpoint_dir=tmp_path)
    assert result.status == "failed" and "state.pt" in result.error
    assert events[-1].kind == "failed"


def test_one_checkpoint_directory_and_a_pointer(runtime, tmp_path) -> None:
    """Resume state is one directory per save; CURRENT names the one to resume from, and a
    save interrupted before the pointer moved (a leftover .tmp) changes nothing."""
    first, _ = run(hard(8), runtime, checkpoint_dir=tmp_path)
    current = (tmp_path / "CURRENT").read_text().strip()
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == [current]
    assert (tmp_path / "ckpt" / current / "state.pt").is_file()
    (tmp_path / "ckpt" / "999999.tmp").mkdir()
    (tmp_path / "ckpt" / "999999.tmp" / "state.pt").write_text("half written")
    again, events = run(hard(8), runtime, checkpoint_dir=tmp_path)
    assert again == first and [type(e) for e in events] == [ExhaustedPayload]


def test_step_events_carry_rollout_correction_and_skip_counts(runtime) -> None:
    _, events = run(hard(16), runtime)
    (step,) = [e for e in events if isinstance(e, StepPayload)]
    m = step.metrics
    assert m["skipped_nonfinite"] == 0.0
    # the hf engine samples from the trainer's own weights: its log-probs are the trainer's
    assert m["rollout_is_mean"] == pytest.approx(1.0, abs=1e-3)
    assert m["rollout_is_capped_frac"] == 0.0 and m["rollout_logp_gap_max"] < 1e-3


def test_a_run_whose_every_step_was_skipped_fails_and_says_why(runtime) -> None:
    """Every update non-finite (a forward hook makes the training forward infinite; sampling,
    in eval mode, is untouched): each step is skipped and counted, and the run ends failed
    with the reason instead of "exhausted"."""
    norm = runtime.trainer.base.get_decoder().norm
    hook = norm.register_forward_hook(lambda m, _i, out: out * float("inf") if m.training else out)
    try:
        result, events = run(hard(24), runtime)
    finally:
        hook.remove()
    steps = [e for e in events if isinstance(e, StepPayload)]
    assert len(steps) == 2 and all(s.metrics["skipped_nonfinite"] == 1.0 for s in steps)
    assert result.status == "failed" and "non-finite gradient norm" in result.error
    assert "every SDPO step (2)" in result.error
    assert events[-1].kind == "failed" and events[-1].error == result.error


def test_an_attempt_cut_at_max_new_tokens_without_an_answer_is_told_so(runtime) -> None:
    from sdpo_core.verifiers.base import TRUNCATED_ATTEMPT

    data = make_problem(9001, 6, max_attempts=4)
    data["verifier"] = {"kind": "answer", "expected": "42"}
    data["sdpo"].update(FAST, samples_per_step=4, max_new_tokens=2)
    _, events = run(parse_problem(data), runtime)
    verdicts = [e.verdict for e in events if isinstance(e, AttemptPayload)]
    assert len(verdicts) == 4
    cut = [v for v in verdicts if v.details.get("truncated")]
    assert cut and all(v.feedback == TRUNCATED_ATTEMPT for v in cut)
