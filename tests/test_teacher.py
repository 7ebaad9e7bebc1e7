"""The self-teacher's context rules (docs/design.md, from the SDPO paper and its public code)."""

from __future__ import annotations

import yaml

from sdpo_core.config import SDPOConfig
from sdpo_core.teacher import Demonstration, build_teacher_contexts, render_reprompt
from sdpo_core.types import Verdict

CFG = SDPOConfig()


def fail(feedback: str) -> Verdict:
    return Verdict(passed=False, score=0.0, feedback=feedback)


PASS = Verdict(passed=True, score=1.0, feedback="")


# The three templates exactly as they stand in the authors' run config
# (lasgroup/SDPO, verl/trainer/config/actor/actor.yaml, self_distillation: block scalars "|-").
AUTHORS_YAML = """\
reprompt_template: |-
  {prompt}{solution}{feedback}

  Correctly solve the original question.

solution_template: |-

  Correct solution:

  {successful_previous_attempt}

feedback_template: |-

  The following is feedback from your unsuccessful earlier attempt:

  {feedback_raw}
"""


def test_templates_are_the_authors_yaml_as_rendered() -> None:
    authors = yaml.safe_load(AUTHORS_YAML)
    assert CFG.reprompt_template == authors["reprompt_template"]
    assert CFG.solution_template == authors["solution_template"]
    assert CFG.feedback_template == authors["feedback_template"]
    msg = render_reprompt("Q?", CFG, solution="S", feedbacks=["F"])
    assert msg == (
        "Q?"
        "\nCorrect solution:\n\nS"
        "\nThe following is feedback from your unsuccessful earlier attempt:\n\nF"
        "\n\nCorrectly solve the original question."
    )
    assert render_reprompt("Q?", CFG) == "Q?\n\nCorrectly solve the original question."


def test_feedback_is_the_samples_own_and_its_attempt_is_never_in_the_prompt() -> None:
    responses = ["attempt-zero", "attempt-one"]
    ctx = build_teacher_contexts("Q?", responses, [fail("fb-zero"), fail("fb-one")], CFG)
    assert "fb-zero" in ctx[0].message and "fb-one" not in ctx[0].message
    assert "fb-one" in ctx[1].message and "fb-zero" not in ctx[1].message
    for c, r in zip(ctx, responses, strict=True):
        assert r not in c.message
        assert c.has_feedback and not c.has_solution


def test_solution_is_a_passing_sibling_never_the_sample_itself() -> None:
    responses = ["wrong", "right-a", "right-b"]
    ctx = build_teacher_contexts("Q?", responses, [fail("fb"), PASS, PASS], CFG)
    assert "right-a" in ctx[0].message and "fb" not in ctx[0].message  # the solution alone
    assert "right-b" in ctx[1].message and "right-a" not in ctx[1].message
    assert "right-a" in ctx[2].message and "right-b" not in ctx[2].message


def test_feedback_is_left_out_beside_a_passing_sibling_unless_asked() -> None:
    """The authors' environment_feedback_only_without_solution: True (actor.yaml): a failing
    sample whose group has a passing sibling sees that solution only; the option keeps both."""
    responses, verdicts = ["wrong", "right"], [fail("fb"), PASS]
    ctx = build_teacher_contexts("Q?", responses, verdicts, CFG)
    assert ctx[0].message == render_reprompt("Q?", CFG, solution="right")
    assert ctx[0].has_solution and not ctx[0].has_feedback
    keep = CFG.merged({"feedback_with_solution": True})
    ctx = build_teacher_contexts("Q?", responses, verdicts, keep)
    assert ctx[0].message == render_reprompt("Q?", keep, solution="right", feedbacks=["fb"])
    assert ctx[0].has_solution and ctx[0].has_feedback
    # without a passing sibling the feedback is used either way
    alone = build_teacher_contexts("Q?", ["wrong"], [fail("fb")], CFG)[0]
    assert alone.message == render_reprompt("Q?", CFG, feedbacks=["fb"])


def test_sample_with_neither_solution_nor_feedback_is_masked() -> None:
    # the only passing sample has no sibling solution and no feedback; a silent failure neither
    ctx = build_teacher_contexts("Q?", ["right", "silent"], [PASS, fail("")], CFG)
    assert ctx[0].masked and ctx[0].message is None
    assert not ctx[1].masked and "right" in ctx[1].message  # the sibling's solution


def test_templates_are_configurable() -> None:
    templates = {"reprompt_template": "{prompt}|{feedback}|{solution}"}
    cfg = CFG.merged({**templates, "feedback_template": "<{feedback_raw}>"})
    ctx = build_teacher_contexts("Q", ["a"], [fail("oops")], cfg)
    assert ctx[0].message == "Q|<oops>|"


def test_feedback_is_truncated_to_the_configured_length() -> None:
    cfg = CFG.merged({"max_feedback_chars": 10})
    ctx = build_teacher_contexts("Q", ["a"], [fail("x" * 50)], cfg)
    assert "x" * 10 in ctx[0].message and "x" * 11 not in ctx[0].message


def block(key: str, expected: str, got: str) -> str:
    return f"Wrong Answer\nInput: {key}\nExpected Output: {expected}\nYour Output: {got}"


def test_feedback_memory_off_is_the_papers_rule() -> None:
    pool = ["earlier feedback"]
    ctx = build_teacher_contexts("Q", ["x"], [fail("own")], CFG, pool)
    assert ctx[0].message == render_reprompt("Q", CFG, feedbacks=["own"])


def test_feedback_memory_adds_the_distinct_feedback_that_covers_most() -> None:
    from sdpo_core.teacher import remember_feedback, select_feedback

    ab, ab2, cd = block("a", "3", "1"), block("a", "3", "2"), block("c", "8", "0")
    pool = remember_feedback([], [fail(ab), fail(ab), PASS, fail(cd)])
    assert pool == [ab, cd]  # distinct, passes ignored, most recent last
    pool = remember_feedback(pool, [fail(ab)])
    assert pool == [cd, ab]
    assert select_feedback(pool, 0) == []
    # the second pick adds the text with the most lines not yet covered, not a near-duplicate
    assert select_feedback([ab, cd, ab2], 2) == [ab2, cd]
    cfg = CFG.merged({"feedback_memory": 2, "feedback_with_solution": True})
    ctx = build_teacher_contexts("Q", ["x", "y"], [fail(ab), PASS], cfg, [ab, cd, ab2])
    assert ctx[0].message == render_reprompt("Q", cfg, solution="y", feedbacks=[ab, ab2, cd])
    assert ctx[1].masked  # a passing sample with no passing sibling: no signal, as before


BEST = CFG.merged({"demonstration": "best_so_far"})


def scored(score: float, feedback: str = "fb") -> Verdict:
    return Verdict(passed=False, score=score, feedback=feedback)


def test_passing_sibling_is_the_default_demonstration() -> None:
    assert CFG.demonstration == "passing_sibling"
    # partial scores never make a demonstration under the paper's rule: feedback alone
    ctx = build_teacher_contexts("Q", ["a", "b"], [scored(0.5, "fa"), scored(0.25, "fb")], CFG)
    assert ctx[0].message == render_reprompt("Q", CFG, feedbacks=["fa"])


def test_best_so_far_shows_the_best_other_attempt_with_its_score_and_own_feedback() -> None:
    responses = ["low", "high", "mid"]
    verdicts = [scored(0.25, "f-low"), scored(0.75, "f-high"), scored(0.5, "f-mid")]
    ctx = build_teacher_contexts("Q", responses, verdicts, BEST)
    # the solution template's framing, a score line after it, then the sample's own feedback
    assert ctx[0].message == (
        "Q\nCorrect solution:\n\nhigh\nScore of this attempt: 0.75"
        "\nThe following is feedback from your unsuccessful earlier attempt:\n\nf-low"
        "\n\nCorrectly solve the original question."
    )
    assert ctx[0].message == render_reprompt(
        "Q", BEST, solution="high", feedbacks=["f-low"], score=0.75
    )
    # the best sample is never its own demonstration: it gets the next best
    assert ctx[1].message == render_reprompt(
        "Q", BEST, solution="mid", feedbacks=["f-high"], score=0.5
    )
    assert all(c.has_solution and c.has_feedback for c in ctx)
    for c, r in zip(ctx, responses, strict=True):
        assert f"\n\n{r}\n" not in c.message


def test_best_so_far_includes_the_best_of_earlier_steps() -> None:
    earlier = Demonstration("old", 0.9, False)
    responses, verdicts = ["a", "b"], [scored(0.5, "fa"), scored(0.25, "fb")]
    ctx = build_teacher_contexts("Q", responses, verdicts, BEST, earlier_best=earlier)
    assert all("\n\nold\nScore of this attempt: 0.9" in c.message for c in ctx)
    # the first of equals wins: the earlier best before this group's equal
    ctx = build_teacher_contexts(
        "Q", ["a"], [scored(0.9)], BEST, earlier_best=Demonstration("old", 0.9, False)
    )
    assert "\n\nold\n" in ctx[0].message
    # an earlier best whose text is this sample's own is not shown to it
    ctx = build_teacher_contexts(
        "Q",
        ["same", "b"],
        [scored(0.5, "fs"), scored(0.1, "fb")],
        BEST,
        earlier_best=Demonstration("same", 0.9, False),
    )
    assert ctx[0].message == render_reprompt("Q", BEST, solution="b", feedbacks=["fs"], score=0.1)
    assert "\n\nsame\nScore of this attempt: 0.9" in ctx[1].message


def test_best_so_far_that_passed_follows_the_feedback_with_solution_rule() -> None:
    responses, verdicts = ["wrong", "right"], [scored(0.5, "fb"), PASS]
    ctx = build_teacher_contexts("Q", responses, verdicts, BEST)
    assert ctx[0].message == render_reprompt("Q", BEST, solution="right", score=1.0)
    assert not ctx[0].has_feedback
    # a lone sample with nothing else to show and no feedback is still masked
    assert build_teacher_contexts("Q", ["right"], [PASS], BEST)[0].masked


def test_score_template_is_configurable() -> None:
    cfg = BEST.merged({"score_template": " [{score}]"})
    ctx = build_teacher_contexts("Q", ["a", "b"], [scored(0.5, ""), scored(0.125, "")], cfg)
    assert (
        ctx[1].message
        == "Q\nCorrect solution:\n\na [0.5]\n\nCorrectly solve the original question."
    )
