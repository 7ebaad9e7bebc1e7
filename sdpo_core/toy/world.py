"""The toy world: lookup-table problems whose answer only feedback can reveal.

A problem has the first N lowercase letters as keys and a hidden, uniformly random table
key -> digit.

    prompt:   Problem 4821: give h(x) for x in a b c d. Answer as x=h(x).
    response: a=7 b=4 c=2 d=5

The keys are fixed so that the answer's format needs no copying (a 4-layer model learned to
copy a shuffled key list far more slowly than to read feedback); what varies, and what only
feedback reveals, is the table.

Without hints every digit is a 1-in-10 guess (N=6: p(solve) = 1e-6 per attempt). The `table`
verifier's feedback names the expected digit of up to two failing keys, so a model that reads
its context (the self-teacher) knows those digits. That is the in-context learning SDPO needs.

This module holds the problem family (`make_problem`, `HARD_SUITE`, the examples/ files) and
the pretraining-data generator (`training_example`), which builds teacher contexts with the
real verifier and `render_reprompt`, so pretraining sees exactly what the solve loop shows.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

from sdpo_core.config import SDPOConfig
from sdpo_core.teacher import render_reprompt
from sdpo_core.verifiers import build_verifier

MIN_KEYS, MAX_KEYS = 1, 8
MAX_NEW_TOKENS = 48  # N=8 needs 25 tokens (key, '=', digit per key, then EOS)
HARD_BUDGET = {"max_attempts": 1024, "max_seconds": 900.0}
EASY_BUDGET = {"max_attempts": 256, "max_seconds": 300.0}

# Training-data mixture: kind -> weight (see `training_example`).
MIXTURE: dict[str, float] = {
    "plain": 0.12,  # prompt -> table: format, and unhinted digits are uniform
    "feedback": 0.48,  # one feedback section -> table: copy the revealed digits
    "multi": 0.15,  # 2..4 feedback sections (multi-turn form) -> table
    "solution": 0.25,  # a correct solution, half the time with feedback -> copy it
}
# Later pretraining cycles: recall-heavy. More solutions in the context: copying a listed
# answer repeats its bigrams exactly, the data that grows induction heads fastest, and the
# key-matching circuit they give is what reading feedback needs too.
RECALL_MIXTURE: dict[str, float] = {
    "plain": 0.10,
    "feedback": 0.35,
    "multi": 0.15,
    "solution": 0.40,
}
# The reading cycles (pretrain.py's READING_CYCLES): feedback-heavy, and most attempts wrong
# at one or two late keys (`late`), as a student that has learned the early keys is. Random
# attempts are wrong at early keys first and the verifier names at most two failing keys in
# order, so the earlier mixtures rarely named a late key: the model they gave read feedback
# about keys a-d and g but never e and f, and a first block only when it named a
# (benchmarks/toy_reading.py). Reading is learned key by key; spreading failures uniformly
# over the table, even from scratch, did not start it for e and f; oversampling late keys in
# long tables did, and a last cycle over all table lengths restores the short answers.
READING_MIXTURE: dict[str, float] = {
    "plain": 0.05,
    "feedback": 0.55,
    "multi": 0.20,
    "solution": 0.20,
}
REPAIR_MIXTURE: dict[str, float] = {
    "plain": 0.15,
    "feedback": 0.45,
    "multi": 0.20,
    "solution": 0.20,
}
LATE_FAILURES = 0.8  # the reading cycles' share of attempts wrong at one or two late keys


# ------------------------------------------------------------------ problems


def render_prompt(pid: int, keys: list[str]) -> str:
    """The user message of a problem."""
    return f"Problem {pid}: give h(x) for x in {' '.join(keys)}. Answer as x=h(x)."


def render_answer(keys: list[str], table: dict[str, str]) -> str:
    """The canonical response: `c=7 h=4 a=2` (keys in prompt order)."""
    return " ".join(f"{k}={table[k]}" for k in keys)


def answer_wrong_at(rng: random.Random, table: dict[str, str], wrong: set[str]) -> str:
    """The canonical response with a different random digit at the keys in `wrong`: an
    attempt whose feedback names exactly those keys (the feedback-reading probes of
    tests/test_toy.py and benchmarks/toy_reading.py)."""
    return " ".join(
        f"{k}={(int(v) + rng.randrange(1, 10)) % 10 if k in wrong else v}" for k, v in table.items()
    )


def sample_instance(rng: random.Random, n_keys: int) -> tuple[int, list[str], dict[str, str]]:
    """(pid, keys in prompt order, table) drawn from `rng`."""
    if not MIN_KEYS <= n_keys <= 26:
        raise ValueError(f"n_keys must be in [{MIN_KEYS}, 26], got {n_keys}")
    pid = rng.randrange(1000, 10000)
    keys = list(string.ascii_lowercase[:n_keys])
    table = {k: str(rng.randrange(10)) for k in keys}
    return pid, keys, table


def make_problem(
    seed: int,
    n_keys: int,
    *,
    max_attempts: int | None = None,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """A full problem JSON object (valid for `sdpo_core.problem.parse_problem`).

    Deterministic in (seed, n_keys). Budget defaults: 1024 attempts / 900 s for N >= 4,
    256 / 300 s below.
    """
    pid, keys, table = sample_instance(random.Random(seed), n_keys)
    budget = dict(HARD_BUDGET if n_keys >= 4 else EASY_BUDGET)
    if max_attempts is not None:
        budget["max_attempts"] = max_attempts
    if max_seconds is not None:
        budget["max_seconds"] = float(max_seconds)
    return {
        "prompt": render_prompt(pid, keys),
        "verifier": {"kind": "table", "cases": table, "max_failures": 2},
        "budget": budget,
        "sdpo": {"max_new_tokens": MAX_NEW_TOKENS},
        "metadata": {"family": "toy-table", "seed": seed, "n_keys": n_keys},
    }


# Fixed hard problems (seeds outside anything pretraining draws; see training_example).
# N = 6..7 (1e-6 .. 1e-7 per attempt; exact base pass@64 3e-5): the very hard suite of
# benchmarks/discovery.py; tests use them where a run must keep going for a few steps.
HARD_SEEDS: list[tuple[int, int]] = [(9001 + i, 6 if i % 2 == 0 else 7) for i in range(8)]
HARD_SUITE: list[dict[str, Any]] = [make_problem(s, n) for s, n in HARD_SEEDS]
# The discovery suite: N = 4 (1e-4 per attempt, base pass@64 = 0.006). No problem carries
# tuned SDPO settings: those that depend on the model are in model/sdpo_defaults.json.
DISCOVERY_SUITE: list[dict[str, Any]] = [make_problem(9101 + i, 4) for i in range(8)]
EASY_EXAMPLE: dict[str, Any] = make_problem(42, 2)

_HARD_TABLES = {tuple(p["verifier"]["cases"].items()) for p in HARD_SUITE + DISCOVERY_SUITE}


def example_files() -> dict[str, dict[str, Any]]:
    """examples/ file name -> problem JSON (kept in sync by tests/test_toy.py)."""
    return {"toy_hard.json": DISCOVERY_SUITE[0], "toy_easy.json": EASY_EXAMPLE}


def write_examples(directory: str | Path) -> list[Path]:
    """Write `example_files()` into `directory` (examples/)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, problem in example_files().items():
        path = directory / name
        path.write_text(json.dumps(problem, indent=2) + "\n")
        paths.append(path)
    return paths


# ------------------------------------------------------------------ training data


def _wrong_digit(rng: random.Random, right: str) -> str:
    return rng.choice([d for d in string.digits if d != right])


def _attempt(rng: random.Random, keys: list[str], table: dict[str, str], late: float = 0.0) -> str:
    """A random attempt: each key right with prob q ~ U(0, 1); some keys missing or garbled.
    With probability `late` instead wrong at one or two keys, drawn from the second half of
    the table (70%) or from all of it."""
    if late and len(keys) >= 2 and rng.random() < late:
        pool = keys[len(keys) // 2 :] if rng.random() < 0.7 else keys
        wrong = set(rng.sample(pool, min(len(pool), rng.choice([1, 2, 2]))))
        return " ".join(
            f"{k}={_wrong_digit(rng, table[k]) if k in wrong else table[k]}" for k in keys
        )
    q = rng.random()
    parts = []
    for k in keys:
        if rng.random() < q:
            parts.append(f"{k}={table[k]}")
        elif rng.random() > 0.08:  # else missing -> "Your Output: (missing)"
            parts.append(f"{k}={_wrong_digit(rng, table[k])}")
    attempt = " ".join(parts)
    if rng.random() < 0.03:
        attempt = rng.choice(["", "I don't know.", attempt.replace("=", ": ")])
    return attempt


def training_example(
    rng: random.Random,
    cfg: SDPOConfig | None = None,
    kind: str | None = None,
    *,
    mixture: dict[str, float] | None = None,
    shuffle_solution: float = 0.0,
    late: float = 0.0,
    long_tables: bool = False,
) -> tuple[str, str, dict[str, str]]:
    """One pretraining example: (user message, response, table). The response is always
    the true table; the message is the plain prompt or a teacher context drawn from
    `mixture` (default `MIXTURE`); a solution in the context is listed in shuffled key order
    with probability `shuffle_solution`; `late`: see `_attempt`; `long_tables`: at least
    4..8 keys (the larger of two draws)."""
    cfg = cfg or SDPOConfig()
    mixture = mixture or MIXTURE
    if kind is None:
        kind = rng.choices(list(mixture), weights=list(mixture.values()))[0]
    while True:
        n_keys = rng.randint(MIN_KEYS, MAX_KEYS)
        if long_tables:
            n_keys = max(n_keys, rng.randint(4, MAX_KEYS))
        pid, keys, table = sample_instance(rng, n_keys)
        if tuple(table.items()) not in _HARD_TABLES:
            break
    prompt = render_prompt(pid, keys)
    answer = render_answer(keys, table)
    verifier = build_verifier({"kind": "table", "cases": table, "max_failures": 2})

    def feedback() -> str:  # the verifier's text for a random failing attempt
        while (verdict := verifier.verify(_attempt(rng, keys, table, late))).passed:
            pass
        return verdict.feedback

    if kind == "plain":
        message = prompt
    elif kind == "feedback":
        message = render_reprompt(prompt, cfg, feedbacks=[feedback()])
    elif kind == "multi":
        fbs = [feedback() for _ in range(rng.randint(2, 4))]
        message = render_reprompt(prompt, cfg, feedbacks=fbs)
    elif kind == "solution":
        fbs = [feedback()] if rng.random() < 0.5 else []
        shown = answer
        if shuffle_solution and rng.random() < shuffle_solution:
            shown = render_answer(rng.sample(keys, len(keys)), table)
        message = render_reprompt(prompt, cfg, solution=shown, feedbacks=fbs)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return message, answer, table


if __name__ == "__main__":  # python -m sdpo_core.toy.world: refresh examples/
    for p in write_examples(Path(__file__).resolve().parents[2] / "examples"):
        print(p)
