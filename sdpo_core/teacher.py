"""The self-teacher: which context each sample's teacher sees, and how the teacher is regularised.

Rules (docs/design.md, from the SDPO paper and its public code):
- The teacher is the same model conditioned on feedback: pi(. | x, f). The student's own
  attempt is scored as the continuation; it is never put into the teacher prompt.
- solution = a successful sibling from the same rollout group (never the sample itself);
  feedback = the verifier's text for this sample. Neither: the sample is masked out.
- Feedback is not accumulated across steps: each teacher sees only its own sample's feedback.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdpo_core.config import SDPOConfig
from sdpo_core.types import Verdict


def render_reprompt(
    prompt: str, cfg: SDPOConfig, *, solution: str | None = None, feedbacks: list[str] = ()
) -> str:
    """The teacher's user message. Several feedbacks (multi-turn baseline) are concatenated."""
    solution_part = (
        cfg.solution_template.format(successful_previous_attempt=solution) if solution else ""
    )
    limit = cfg.max_feedback_chars or None
    feedback_part = "".join(
        cfg.feedback_template.format(feedback_raw=f[:limit]) for f in feedbacks if f
    )
    return cfg.reprompt_template.format(
        prompt=prompt, solution=solution_part, feedback=feedback_part
    )


@dataclass(frozen=True)
class TeacherContext:
    """What the teacher of one sample sees. `message` is None when the sample is masked."""

    message: str | None
    has_solution: bool
    has_feedback: bool

    @property
    def masked(self) -> bool:
        return self.message is None


def build_teacher_contexts(
    prompt: str, responses: list[str], verdicts: list[Verdict], cfg: SDPOConfig
) -> list[TeacherContext]:
    """One teacher context per sample of a rollout group (all samples answer `prompt`)."""
    assert len(responses) == len(verdicts)
    passing = [i for i, v in enumerate(verdicts) if v.passed]
    contexts = []
    for i, verdict in enumerate(verdicts):
        sibling = next((j for j in passing if j != i), None)  # never the sample itself
        solution = responses[sibling] if sibling is not None else None
        feedback = verdict.feedback if (verdict.feedback and not verdict.passed) else ""
        if solution is None and not feedback:
            contexts.append(TeacherContext(None, False, False))
            continue
        message = render_reprompt(prompt, cfg, solution=solution, feedbacks=[feedback])
        contexts.append(TeacherContext(message, solution is not None, bool(feedback)))
    return contexts
