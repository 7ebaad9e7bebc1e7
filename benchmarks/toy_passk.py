"""Base-model pass@k on the toy hard suite (no SDPO, plain sampling at temperature 1.0).

    python benchmarks/toy_passk.py [--n 128] [--model DIR]

For each problem of HARD_SUITE (or, with --suite discovery, DISCOVERY_SUITE), draws n
samples (batches of 64) with transformers `generate`,
verifies them with the problem's verifier, and reports the unbiased pass@k estimator
(Chen et al. 2021) for k = 1, 16, 64, averaged over the suite; also the mean per-key score
and the rate of well-formed answers. Since a hard problem is rarely solved even once in n
samples, it also reports the exact figure the estimator approximates: p = the model's
probability of the canonical correct answer (teacher-forced), pass@k = 1 - (1 - p)^k
(a lower bound: other spellings of a correct answer are not counted). Prints the figures and writes
benchmarks/results/toy_passk.json. The toy world is built so that pass@64 < 0.03 on the hard
suite: a problem the base model solves by sampling alone leaves SDPO nothing to show.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from math import comb
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdpo_core.toy import DEFAULT_MODEL_DIR, DISCOVERY_SUITE, HARD_SUITE
from sdpo_core.verifiers import build_verifier

KS = (1, 16, 64)
RESULTS = Path(__file__).resolve().parent / "results"
SUITES = {"hard": HARD_SUITE, "discovery": DISCOVERY_SUITE}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples passes) from c passes in n samples."""
    if k > n:
        raise ValueError(f"k={k} > n={n}")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


@torch.no_grad()
def sample(model, tok, prompt: str, n: int, batch: int = 64, max_new_tokens: int = 48) -> list[str]:
    """n responses to `prompt` at temperature 1.0 (no top-k / top-p truncation)."""
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # [1, P]
    out: list[str] = []
    while len(out) < n:
        m = min(batch, n - len(out))
        gen = model.generate(
            ids.repeat(m, 1),  # [m, P]
            attention_mask=torch.ones(m, ids.shape[1], dtype=torch.long),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )  # [m, P + new]
        out += tok.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
    return out


@torch.no_grad()
def answer_prob(model, tok, prompt: str, answer: str) -> float:
    """The model's probability of `answer` + EOS as the response to `prompt`."""
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    p = tok(text, add_special_tokens=False)["input_ids"]
    r = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    logp = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : -1].log_softmax(-1)
    return float(logp.gather(-1, torch.tensor(r)[:, None]).sum().exp())  # logp: [R, V]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=128, help="samples per problem (>= 64)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--suite", choices=sorted(SUITES), default="hard")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()

    t0 = time.time()
    rows = []
    for problem in SUITES[args.suite]:
        verifier = build_verifier(problem["verifier"])
        keys = list(problem["verifier"]["cases"])
        fmt = re.compile("^" + " ".join(f"{re.escape(k)}=[0-9]" for k in keys) + "$")
        responses = sample(model, tok, problem["prompt"], args.n)
        verdicts = [verifier.verify(r) for r in responses]
        c = sum(v.passed for v in verdicts)
        cases = problem["verifier"]["cases"]
        p_exact = answer_prob(
            model, tok, problem["prompt"], " ".join(f"{k}={cases[k]}" for k in keys)
        )
        rows.append(
            {
                "seed": problem["metadata"]["seed"],
                "n_keys": len(keys),
                "n": args.n,
                "passed": c,
                "mean_score": sum(v.score for v in verdicts) / len(verdicts),
                "well_formed": sum(bool(fmt.match(r.strip())) for r in responses) / len(responses),
                **{f"pass@{k}": pass_at_k(args.n, c, k) for k in KS},
                "p_correct": p_exact,
                **{f"exact_pass@{k}": 1 - (1 - p_exact) ** k for k in KS},
            }
        )
        print(
            f"seed {rows[-1]['seed']}  N={len(keys)}  passed {c}/{args.n}  "
            f"key acc {rows[-1]['mean_score']:.3f}  well-formed {rows[-1]['well_formed']:.3f}  "
            f"p(correct) {p_exact:.2e}"
        )
    summary = {
        "model": Path(args.model).name,
        "problems": len(rows),
        "samples_per_problem": args.n,
        "temperature": 1.0,
        **{f"pass@{k}": sum(r[f"pass@{k}"] for r in rows) / len(rows) for k in KS},
        **{f"exact_pass@{k}": sum(r[f"exact_pass@{k}"] for r in rows) / len(rows) for k in KS},
        "mean_key_accuracy": sum(r["mean_score"] for r in rows) / len(rows),
        "well_formed": sum(r["well_formed"] for r in rows) / len(rows),
        "seconds": round(time.time() - t0, 1),
        "per_problem": rows,
    }
    for k in KS:
        print(f"pass@{k} = {summary[f'pass@{k}']:.4f}   (exact: {summary[f'exact_pass@{k}']:.2e})")
    print(f"mean key accuracy = {summary['mean_key_accuracy']:.3f} (uniform guessing: 0.1)")
    out = RESULTS / ("toy_passk.json" if args.suite == "hard" else f"toy_passk_{args.suite}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"suite": args.suite, **summary}, indent=2) + "\n")
    print(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main()
