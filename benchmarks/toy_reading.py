"""How well the bundled model, as the self-teacher, reads the toy verifier's feedback, per key.

    python benchmarks/toy_reading.py [--model DIR]

SDPO can only teach what the teacher reads from its context. For each problem of the very
hard suite and 4 fresh ones, the base model (adapter off, as the EMA teacher starts) scores
the correct answer after a teacher context with the real verifier's feedback on an attempt
that is wrong exactly at:
- one key k (one feedback block):                     p(correct digit of k)
- keys k and k+1 (two blocks, the verifier's maximum): p(correct digit) of each block's key
averaged per key, and the same with no feedback (the plain prompt: 0.1 = a guess).
Prints the table and writes benchmarks/results/toy_reading.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch

from sdpo_core.runtime import load_runtime
from sdpo_core.teacher import render_reprompt
from sdpo_core.toy import HARD_SUITE, make_problem
from sdpo_core.toy.world import answer_wrong_at
from sdpo_core.verifiers import build_verifier

RESULTS = Path(__file__).resolve().parent / "results"
FRESH = [make_problem(31101 + i, 6 + i % 2) for i in range(4)]  # = fresh_very_hard[:4]


def digit_probs(trainer, message: str, answer_ids: list[int], positions: list[int]) -> list[float]:
    """The base model's p of each answer digit (at `positions`) after `message`."""
    with trainer.model.disable_adapter():
        lp = trainer.sequence_logprobs(trainer.encode_chat(message), answer_ids)
    return [float(torch.tensor(lp[i]).exp()) for i in positions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runtime = load_runtime(args.model, engine="hf", device="cpu")
    trainer = runtime.trainer
    trainer.reset(runtime.defaults)
    tok, cfg = trainer.tokenizer, trainer.cfg
    rng = random.Random(0)
    rows: dict[str, dict[str, list[float]]] = {}  # key -> kind -> probabilities

    def add(key: str, kind: str, p: float) -> None:
        rows.setdefault(key, {}).setdefault(kind, []).append(p)

    for problem in HARD_SUITE + FRESH:
        cases = problem["verifier"]["cases"]
        keys = list(cases)
        verifier = build_verifier(problem["verifier"])
        answer = " ".join(f"{k}={v}" for k, v in cases.items())
        ids = tok.encode(answer, add_special_tokens=False)
        digits = [i for i, t in enumerate(ids) if tok.decode([t]).strip().isdigit()]
        assert len(digits) == len(keys), answer

        for i, p in enumerate(digit_probs(trainer, problem["prompt"], ids, digits)):
            add(keys[i], "no feedback", p)
        for i, k in enumerate(keys):
            feedback = verifier.verify(answer_wrong_at(rng, cases, {k})).feedback
            message = render_reprompt(problem["prompt"], cfg, feedbacks=[feedback])
            add(k, "one block", digit_probs(trainer, message, ids, digits)[i])
        for i in range(len(keys) - 1):
            feedback = verifier.verify(answer_wrong_at(rng, cases, {keys[i], keys[i + 1]})).feedback
            message = render_reprompt(problem["prompt"], cfg, feedbacks=[feedback])
            probs = digit_probs(trainer, message, ids, digits)
            add(keys[i], "first of two blocks", probs[i])
            add(keys[i + 1], "second of two blocks", probs[i + 1])

    kinds = ["no feedback", "one block", "first of two blocks", "second of two blocks"]
    table = {
        k: {kind: round(statistics.fmean(v[kind]), 3) for kind in kinds if kind in v}
        for k, v in rows.items()
    }
    print(f"{'key':>4} " + " ".join(f"{kind:>21}" for kind in kinds))
    for k, cells in table.items():
        print(f"{k:>4} " + " ".join(f"{cells.get(kind, float('nan')):>21.2f}" for kind in kinds))
    RESULTS.mkdir(exist_ok=True)
    out = {"problems": len(HARD_SUITE) + len(FRESH), "p_correct_digit": table}
    (RESULTS / "toy_reading.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'toy_reading.json'}")


if __name__ == "__main__":
    main()
