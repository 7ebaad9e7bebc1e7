"""The methods a problem can run with (`ProblemSpec.method`), all through the one solve loop:

- `sdpo`: the student samples, the verifier's feedback builds the self-teacher, an SDPO step
  updates the LoRA adapter (the service's method).
- `best_of_k`: independent samples from the base model, no training (the adapter stays at
  its zero initialisation, which is the base model).
- `multi_turn`: `samples_per_step` conversations with the base model, no training; each
  attempt is followed by its verifier feedback, and a conversation's next attempt sees all
  its earlier feedback (the teacher's reprompt format with every feedback of the chain,
  oldest first). Rule for the window: the most recent feedbacks that fit the model's window
  minus `max_new_tokens` are kept, the oldest dropped.

Same budget, sampling settings, verifier, events and statuses for all three; attempts count
every generation, so discovery times compare directly.
"""

from __future__ import annotations

from collections.abc import Callable

from sdpo_core.config import SDPOConfig
from sdpo_core.contract import METHODS, Method
from sdpo_core.teacher import render_reprompt

__all__ = ["METHODS", "Method", "conversation_prompt"]


def conversation_prompt(
    encode: Callable[[str], list[int]],
    prompt: str,
    cfg: SDPOConfig,
    feedbacks: list[str],
    window: int,
) -> list[int]:
    """A conversation's next prompt: the problem with the most recent feedbacks that fit
    `window` tokens (a binary search over how many of the oldest to drop, since fewer
    feedbacks never encode longer)."""
    encoded: dict[int, list[int]] = {}

    def ids(start: int) -> list[int]:
        if start not in encoded:
            kept = feedbacks[start:]
            text = render_reprompt(prompt, cfg, feedbacks=kept) if kept else prompt
            encoded[start] = encode(text)
        return encoded[start]

    lo, hi = 0, len(feedbacks)  # the fewest dropped that fit lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if len(ids(mid)) <= window:
            hi = mid
        else:
            lo = mid + 1
    return ids(lo)
