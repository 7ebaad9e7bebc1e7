"""The self-teacher: which context each sample's teacher sees, and how the teacher is regularised.

Rules (docs/design.md, from the SDPO paper and its public code):
- The teacher is the same model conditioned on feedback: pi(. | x, f). The student's own
  attempt is scored as the continuation; it is never put into the teacher prompt.
- solution = a successful sibling from the same rollout group (never the sample itself);
  feedback = the verifier's text for this sample, left out when there is a solution (the
  authors' environment_feedback_only_without_solution; cfg.feedback_with_solution keeps it).
  Neither: the sample is masked out.
- Feedback is not accumulated across steps: each teacher sees only its own sample's feedback.

cfg.demonstration = "best_so_far" (beyond the paper, docs/algorithm-options.md) replaces the
passing sibling by the highest-scoring attempt so far (this group's and the best of earlier
steps), other than the sample itself (nor an identical text), shown in the solution template
with its score (cfg.score_template). The sample's own feedback stays beside a demonstration
that did not pass; beside one that passed, feedback_with_solution decides as for a sibling.

Beyond the paper (off with feedback_memory = 0, docs/algorithm-options.md): with
feedback_memory = m > 0 a failing sample's teacher also sees m distinct feedback texts the
problem got so far (this step's and earlier ones), chosen to cover the most distinct feedback
lines, so the teacher knows every failing case that feedback has named, not only this
sample's two. Without it, at cases this feedback does not name the teacher is near the base
model and reverse KL pulls what the student already learned back towards it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdpo_core.config import SDPOConfig
from sdpo_core.types import Verdict


def render_reprompt(
    prompt: str,
    cfg: SDPOConfig,
    *,
    solution: str | None = None,
    feedbacks: list[str] = (),
    score: float | None = None,
) -> str:
    """The teacher's user message. Several feedbacks (multi-turn baseline) are concatenated;
    `score`: the demonstration's score, a line after it (best_so_far)."""
    solution_part = (
        cfg.solution_template.format(successful_previous_attempt=solution) if solution else ""
    )
    if solution and score is not None:
        solution_part += cfg.score_template.format(score=f"{score:.4g}")
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


@dataclass(frozen=True)
class Demonstration:
    """An attempt a teacher may be shown: its text (thinking stripped), score and pass."""

    text: str
    score: float
    passed: bool


def _best_other(
    candidates: list[Demonstration], own: str, skip: int | None
) -> Demonstration | None:
    """The highest-scoring candidate (the first of equals) other than index `skip` and any with
    the text `own`: a sample is never its own demonstration."""
    best = None
    for j, c in enumerate(candidates):
        if j != skip and c.text != own and (best is None or c.score > best.score):
            best = c
    return best


MAX_FEEDBACK_POOL = 4096  # distinct feedback texts a run remembers (the oldest are dropped)


def remember_feedback(pool: list[str], verdicts: list[Verdict]) -> list[str]:
    """The pool of distinct feedback texts, most recently seen last, with `verdicts` added."""
    fresh = [v.feedback for v in verdicts if v.feedback and not v.passed]
    seen = set(fresh)
    kept = [f for f in pool if f not in seen]
    return (kept + list(dict.fromkeys(fresh)))[-MAX_FEEDBACK_POOL:]


def select_feedback(pool: list[str], m: int) -> list[str]:
    """Up to m texts of `pool` that greedily cover the most distinct lines (ties: the most
    recent)."""
    covered: set[str] = set()
    chosen: list[str] = []
    lines = [set(f.splitlines()) - {""} for f in pool]
    for _ in range(m):
        best, gain = None, 0
        for i in range(len(pool) - 1, -1, -1):
            g = len(lines[i] - covered)
            if g > gain:
                best, gain = i, g
        if best is None:
            break
        chosen.append(pool[best])
        covered |= lines[best]
    return chosen


def build_teacher_contexts(
    prompt: str,
    responses: list[str],
    verdicts: list[Verdict],
    cfg: SDPOConfig,
    feedback_pool: list[str] = (),
    earlier_best: Demonstration | None = None,
) -> list[TeacherContext]:
    """One teacher context per sample of a rollout group (all samples answer `prompt`).
    `feedback_pool`: the run's distinct feedback so far (used when cfg.feedback_memory > 0);
    `earlier_best`: the best attempt of earlier steps (used when cfg.demonstration is
    best_so_far)."""
    assert len(responses) == len(verdicts)
    memory = select_feedback(list(feedback_pool), cfg.feedback_memory)
    passing = [i for i, v in enumerate(verdicts) if v.passed]
    group = [Demonstration(r, v.score, v.passed) for r, v in zip(responses, verdicts, strict=True)]
    earlier = [earlier_best] if earlier_best is not None else []
    contexts = []
    for i, verdict in enumerate(verdicts):
        score = None
        if cfg.demonstration == "best_so_far":
            demo = _best_other(earlier + group, responses[i], len(earlier) + i)
            solution, score = (demo.text, demo.score) if demo is not None else (None, None)
            shown_passed = demo is not None and demo.passed
        else:
            sibling = next((j for j in passing if j != i), None)  # never the sample itself
            solution = responses[sibling] if sibling is not None else None
            shown_passed = solution is not None
        feedback = verdict.feedback if (verdict.feedback and not verdict.passed) else ""
        if shown_passed and not cfg.feedback_with_solution:
            feedback = ""
        if solution is None and not feedback:
            contexts.append(TeacherContext(None, False, False))
            continue
        feedbacks = [feedback] + [f for f in memory if f != feedback] if feedback else []
        feedbacks = feedbacks[: 1 + cfg.feedback_memory]
        message = render_reprompt(prompt, cfg, solution=solution, feedbacks=feedbacks, score=score)
        contexts.append(TeacherContext(message, solution is not None, bool(feedback)))
    return contexts
