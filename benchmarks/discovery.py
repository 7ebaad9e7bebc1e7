"""Discovery time, SDPO vs best-of-k vs multi-turn at the same attempt budget, on the toy
discovery suite (N = 4 keys, base pass@64 = 0.006).

- sdpo:       the solve loop (hf engine, bundled model), 16 rollouts per step.
- best_of_k:  the same sampler with no updates, 16 at a time, until a pass or the budget.
- multi_turn: 16 parallel chains; each attempt sees all its chain's past feedback in the
              context (the teacher's reprompt format), oldest dropped to fit the window.

Discovery time = index of the first passing attempt, counting every generation; an unsolved
run counts at the budget. Prints discovery@k, mean attempts, and last the line
`ratio best_of_k/sdpo = X`. Writes benchmarks/results/discovery.{json,png}.

    python benchmarks/discovery.py [--problems 8] [--seeds 2] [--budget 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sdpo_core.problem import parse_problem
from sdpo_core.runtime import Runtime, load_runtime
from sdpo_core.solve import solve
from sdpo_core.teacher import render_reprompt
from sdpo_core.toy import DISCOVERY_SUITE
from sdpo_core.types import SamplingParams
from sdpo_core.verifiers import build_verifier

RESULTS = Path(__file__).resolve().parent / "results"
KS = [16, 32, 64, 128, 256, 512, 1024]


def run_sdpo(runtime: Runtime, problem_json: dict, seed: int, budget: int) -> int | None:
    data = {**problem_json, "budget": {"max_attempts": budget, "max_seconds": 3600}}
    data["sdpo"] = {**data["sdpo"], "seed": seed}
    result = solve(parse_problem(data), runtime)
    return result.first_pass_attempt


def run_best_of_k(runtime: Runtime, problem_json: dict, seed: int, budget: int) -> int | None:
    problem = parse_problem(problem_json)
    cfg = problem.sdpo_config().merged({"seed": seed})
    runtime.trainer.reset(cfg)  # a fresh adapter is the base model; sets the seed
    verifier = build_verifier(problem.verifier)
    prompt_ids = runtime.trainer.encode_chat(problem.prompt)
    made = 0
    while made < budget:
        n = min(cfg.samples_per_step, budget - made)
        sampling = SamplingParams(n=n, max_new_tokens=cfg.max_new_tokens, temperature=1.0)
        completions = runtime.engine.generate(prompt_ids, sampling)
        for i, v in enumerate(verifier.verify_batch([c.text for c in completions])):
            if v.passed:
                return made + i + 1
        made += n
    return None


@torch.no_grad()
def _sample_batch(runtime: Runtime, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """One sample per prompt, prompts of different lengths (left padding)."""
    trainer = runtime.trainer
    tok = trainer.tokenizer
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tok.pad_token_id)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        attn[i, width - len(p) :] = 1
    out = trainer.model.generate(
        input_ids=ids,
        attention_mask=attn,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return tok.batch_decode(out[:, width:], skip_special_tokens=True)


def run_multi_turn(runtime: Runtime, problem_json: dict, seed: int, budget: int) -> int | None:
    problem = parse_problem(problem_json)
    cfg = problem.sdpo_config().merged({"seed": seed})
    trainer = runtime.trainer
    trainer.reset(cfg)
    verifier = build_verifier(problem.verifier)
    window = trainer.base.config.max_position_embeddings - cfg.max_new_tokens
    chains: list[list[str]] = [[] for _ in range(cfg.samples_per_step)]
    made = 0
    while made < budget:
        n = min(len(chains), budget - made)
        prompts = []
        for history in chains[:n]:
            kept = list(history)
            while True:  # drop the oldest feedback until the context fits the window
                message = (
                    render_reprompt(problem.prompt, cfg, feedbacks=kept) if kept else problem.prompt
                )
                ids = trainer.encode_chat(message)
                if len(ids) <= window or not kept:
                    break
                kept.pop(0)
            prompts.append(ids)
        texts = _sample_batch(runtime, prompts, cfg.max_new_tokens)
        for i, v in enumerate(verifier.verify_batch(texts)):
            if v.passed:
                return made + i + 1
            chains[i].append(v.feedback)
        made += n
    return None


METHODS = {"sdpo": run_sdpo, "best_of_k": run_best_of_k, "multi_turn": run_multi_turn}


def summarise(found: list[int | None], budget: int) -> dict:
    return {
        "discovery_at_k": {
            k: sum(f is not None and f <= k for f in found) / len(found) for k in KS if k <= budget
        },
        "mean_attempts": statistics.fmean(budget if f is None else f for f in found),
        "solved_fraction": sum(f is not None for f in found) / len(found),
        "first_pass": found,
    }


def plot(summary: dict, budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, s in summary.items():
        found = sorted(f for f in s["first_pass"] if f is not None)
        xs = list(range(1, budget + 1))
        ys = [sum(f <= x for f in found) / len(s["first_pass"]) for x in xs]
        ax.plot(xs, ys, label=f"{method} (mean {s['mean_attempts']:.0f})")
    ax.set_xscale("log")
    ax.set_xlabel("attempts k")
    ax.set_ylabel("discovery@k (fraction solved)")
    ax.set_title("Toy hard suite: discovery curves")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=len(DISCOVERY_SUITE))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--methods", default="sdpo,best_of_k,multi_turn")
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--sdpo", default="{}", help="JSON overrides of the problems' sdpo settings"
    )
    parser.add_argument("--tag", default="", help="suffix of the results files")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a busy box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runtime = load_runtime(args.model, engine="hf", device="cpu")
    overrides = json.loads(args.sdpo)
    problems = [{**p, "sdpo": {**p["sdpo"], **overrides}} for p in DISCOVERY_SUITE[: args.problems]]
    summary: dict[str, dict] = {}
    for method in args.methods.split(","):
        found: list[int | None] = []
        t0 = time.perf_counter()
        for p_index, problem in enumerate(problems):
            for seed in range(args.seeds):
                f = METHODS[method](runtime, problem, seed, args.budget)
                found.append(f)
                print(f"{method:>10} problem {p_index} seed {seed}: first pass {f}", flush=True)
        summary[method] = summarise(found, args.budget)
        summary[method]["seconds"] = time.perf_counter() - t0
    print(f"\nhard suite: {len(problems)} problems x {args.seeds} seeds, budget {args.budget}")
    print(
        f"{'method':>10} {'mean att.':>9} {'solved':>7}  "
        + " ".join(f"d@{k:<5}" for k in KS if k <= args.budget)
    )
    for method, s in summary.items():
        cells = " ".join(f"{v:<7.2f}" for v in s["discovery_at_k"].values())
        print(f"{method:>10} {s['mean_attempts']:>9.1f} {s['solved_fraction']:>7.2f}  {cells}")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "budget": args.budget,
        "problems": len(problems),
        "seeds": args.seeds,
        "methods": summary,
    }
    if "sdpo" in summary and "best_of_k" in summary:
        out["ratio_best_of_k_over_sdpo"] = (
            summary["best_of_k"]["mean_attempts"] / summary["sdpo"]["mean_attempts"]
        )
    stem = f"discovery{args.tag}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(summary, args.budget, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / stem}.json and {stem}.png")
    if "ratio_best_of_k_over_sdpo" in out:
        print(f"ratio best_of_k/sdpo = {out['ratio_best_of_k_over_sdpo']:.2f}")


if __name__ == "__main__":
    main()
