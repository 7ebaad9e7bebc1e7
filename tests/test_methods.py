"""The baselines as methods of the one solve loop: best_of_k samples the base model with no
training; multi_turn keeps each conversation's feedback and shows it to the next attempt,
within the model's window; both resume exactly; an unknown method is refused naming it."""

from __future__ import annotations

import pytest
import torch

from sdpo_core.contract import AttemptPayload, ExhaustedPayload, StepPayload
from sdpo_core.methods import conversation_prompt
from sdpo_core.problem import ProblemError, parse_problem
from sdpo_core.solve import solve
from sdpo_core.teacher import render_reprompt
from sdpo_core.toy import make_problem

FAST = {"samples_per_step": 8}


def problem(method: str, max_attempts: int, **sdpo):
    data = make_problem(9001, 6, max_attempts=max_attempts)
    data["sdpo"].update(FAST, **sdpo)
    return parse_problem({**data, "method": method})


def run(spec, runtime, **kw):
    events: list = []
    return solve(spec, runtime, on_event=events.append, **kw), events


def attempts_of(events) -> list[tuple[int, str]]:
    return [(e.index, e.text) for e in events if isinstance(e, AttemptPayload)]


def test_unknown_method_is_refused_naming_the_field() -> None:
    data = make_problem(9001, 6)
    with pytest.raises(ProblemError) as info:
        parse_problem({**data, "method": "beam_search"})
    assert info.value.field == "method"
    assert parse_problem(data).method == "sdpo"  # the default


@pytest.mark.parametrize("method", ["best_of_k", "multi_turn"])
def test_baselines_never_train(runtime, tmp_path, method) -> None:
    result, events = run(problem(method, 20), runtime, checkpoint_dir=tmp_path)
    assert result.status == "exhausted" and result.attempts == 20
    assert result.steps == 0 and result.adapter_version == 0
    assert not any(isinstance(e, StepPayload) for e in events)
    assert [i for i, _ in attempts_of(events)] == list(range(1, 21))
    assert isinstance(events[-1], ExhaustedPayload)
    assert not (tmp_path / "adapter").exists()  # nothing trained, nothing exported
    # the student adapter is still its zero initialisation: the base model sampled
    b = [p for n, p in runtime.trainer.model.named_parameters() if "lora_B" in n]
    assert b and all(torch.count_nonzero(p) == 0 for p in b)


def test_multi_turn_conversations_carry_each_attempts_feedback(runtime, tmp_path) -> None:
    spec = problem("multi_turn", 24)
    result, events = run(spec, runtime, checkpoint_dir=tmp_path)
    assert result.attempts == 24
    state = torch.load(next((tmp_path / "ckpt").iterdir()) / "state.pt", weights_only=False)
    feedback = {e.index: e.verdict.feedback for e in events if isinstance(e, AttemptPayload)}
    # 8 conversations; attempts 1-8 and 9-16 were followed by feedback (the last batch ends
    # the budget, so nothing is added after it)
    assert state["conversations"] == [[feedback[i + 1], feedback[i + 9]] for i in range(8)]
    assert all(f.startswith("Wrong Answer") for f in feedback.values())


def test_conversation_prompt_keeps_the_latest_feedback_that_fits(runtime) -> None:
    trainer = runtime.trainer
    spec = problem("multi_turn", 16)
    cfg = spec.sdpo_config(runtime.defaults)
    feedbacks = [f"Wrong Answer\nInput: k{i}\nExpected Output: {i}" for i in range(40)]
    full = trainer.encode_chat(render_reprompt(spec.prompt, cfg, feedbacks=feedbacks))
    window = len(full) - 60  # too small for all of them
    got = conversation_prompt(trainer.encode_chat, spec.prompt, cfg, feedbacks, window)
    assert len(got) <= window
    kept = next(
        feedbacks[s:]
        for s in range(len(feedbacks))
        if trainer.encode_chat(render_reprompt(spec.prompt, cfg, feedbacks=feedbacks[s:])) == got
    )
    assert kept[-1] == feedbacks[-1] and len(kept) < len(feedbacks)  # the oldest dropped
    one_more = render_reprompt(spec.prompt, cfg, feedbacks=feedbacks[-len(kept) - 1 :])
    assert len(trainer.encode_chat(one_more)) > window  # as many as fit, no fewer
    assert conversation_prompt(trainer.encode_chat, spec.prompt, cfg, [], window) == (
        trainer.encode_chat(spec.prompt)
    )


@pytest.mark.parametrize("method", ["best_of_k", "multi_turn"])
def test_a_stopped_baseline_resumes_exactly(runtime, tmp_path, method) -> None:
    _, reference = run(problem(method, 32), runtime)
    seen: list = []
    first = solve(
        problem(method, 32),
        runtime,
        on_event=seen.append,
        checkpoint_dir=tmp_path,
        should_stop=lambda: sum(isinstance(e, AttemptPayload) for e in seen) >= 16,
    )
    assert first.status == "stopped" and first.attempts == 16
    resumed: list = []
    second = solve(problem(method, 32), runtime, on_event=resumed.append, checkpoint_dir=tmp_path)
    assert second.status == "exhausted" and second.attempts == 32
    log = dict(attempts_of(seen))
    for index, text in attempts_of(resumed):
        assert log.setdefault(index, text) == text
    assert sorted(log.items()) == attempts_of(reference)
