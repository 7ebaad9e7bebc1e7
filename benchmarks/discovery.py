"""Discovery time, SDPO vs best-of-k vs multi-turn at the same attempt budget, on a toy suite.

Suites (sdpo_core/toy/world.py): `discovery` (8 problems, N = 4 keys, base pass@64 = 6e-3),
`very_hard` (8 problems, N = 6..7, base pass@64 = 3e-5), and `fresh_discovery` /
`fresh_very_hard`: the same kinds drawn with seeds no tuning saw.

- sdpo:           the solve loop (hf engine, bundled model) with the model's defaults file
                  (sdpo_core/toy/model/sdpo_defaults.json), the problem's block and --sdpo.
- best_of_k:      the problem with `"method": "best_of_k"`: the same loop and sampler with
                  no updates (the base model), 16 at a time, until a pass or the budget.
- best_of_k_exact: best-of-k's expectation from the model's own probability p of the correct
                  answer (as benchmarks/toy_passk.py computes it): discovery@k = 1-(1-p)^k,
                  mean attempts capped at the budget B = (1-(1-p)^B)/p. Not sampled.
- multi_turn:     the problem with `"method": "multi_turn"` (sdpo_core/methods.py): 16
                  conversations; each attempt sees all its conversation's past feedback in
                  the context (the teacher's reprompt format), oldest dropped to fit the
                  model's window (max_position_embeddings minus the response length).

Discovery time = index of the first passing attempt, counting every generation; an unsolved
run counts at the budget. Prints discovery@k, mean attempts and the ratio lines
`ratio METHOD/sdpo = X`; writes benchmarks/results/discovery_SUITE[TAG].json with every run's
first pass and, for SDPO, per-step diagnostics (mean score and per-key accuracy of the
student's samples). benchmarks/plot_discovery.py draws the discovery@k curves from it.

    python benchmarks/discovery.py --suite very_hard --seeds 3 --budget 3000 --jobs 2
    python benchmarks/discovery.py --suite very_hard --methods sdpo \
        --sdpo '{"ema_target": "delta"}' --tag _ema_delta   # an ablation
    python benchmarks/discovery.py --suite very_hard --budget 3000 \
        --export very_hard.jsonl   # the suite for `sdpo bench very_hard.jsonl --seeds 3`
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch

from sdpo_core.contract import AttemptPayload, StepPayload
from sdpo_core.discovery_stats import KS, summarise
from sdpo_core.problem import parse_problem
from sdpo_core.runtime import Runtime, load_runtime
from sdpo_core.solve import solve
from sdpo_core.toy import DISCOVERY_SUITE, HARD_SUITE, make_problem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_passk import answer_prob

RESULTS = Path(__file__).resolve().parent / "results"
# Fresh problems: seeds no tuning run saw (tuning used the fixed suites only).
FRESH_SEED = 31001
SUITES = {
    "discovery": DISCOVERY_SUITE,
    "very_hard": HARD_SUITE,
    "fresh_discovery": [make_problem(FRESH_SEED + i, 4) for i in range(8)],
    "fresh_very_hard": [make_problem(FRESH_SEED + 100 + i, 6 + i % 2) for i in range(8)],
}


def _with_budget(problem_json: dict, budget: int, sdpo: dict) -> dict:
    data = {**problem_json, "budget": {"max_attempts": budget, "max_seconds": 7200}}
    data["sdpo"] = {**data.get("sdpo", {}), **sdpo}
    return data


def run_sdpo(runtime: Runtime, problem_json: dict, seed: int, budget: int, sdpo: dict) -> dict:
    problem = parse_problem(_with_budget(problem_json, budget, {**sdpo, "seed": seed}))
    keys = list(problem.verifier.cases)
    trace: list[dict] = []
    hits: dict[str, int] = dict.fromkeys(keys, 0)
    scores: list[float] = []

    def on_event(event) -> None:
        if isinstance(event, AttemptPayload):
            scores.append(event.verdict.score)
            for case in event.verdict.details.get("tests", []):
                hits[case["input"]] += bool(case["passed"])
        elif isinstance(event, StepPayload):
            n = max(len(scores), 1)
            trace.append(
                {
                    "step": event.step,
                    "score": round(sum(scores) / n, 3),
                    "key_acc": [round(hits[k] / n, 3) for k in keys],
                    "kl": round(event.metrics.get("kl", 0.0), 4),
                    "teacher_delta_ratio": round(event.metrics.get("teacher_delta_ratio", 0.0), 4),
                }
            )
            scores.clear()
            hits.update(dict.fromkeys(keys, 0))

    result = solve(problem, runtime, on_event=on_event)
    return {"first_pass": result.first_pass_attempt, "trace": trace}


def run_baseline(
    method: str, runtime: Runtime, problem_json: dict, seed: int, budget: int, sdpo: dict
) -> dict:
    """best_of_k or multi_turn: the service's own method (sdpo_core/methods.py), run by the
    same solve loop as SDPO."""
    data = _with_budget(problem_json, budget, {**sdpo, "seed": seed})
    result = solve(parse_problem({**data, "method": method}), runtime)
    if result.status == "failed":
        raise RuntimeError(result.error)
    return {"first_pass": result.first_pass_attempt}


METHODS = {
    "sdpo": run_sdpo,
    "best_of_k": functools.partial(run_baseline, "best_of_k"),
    "multi_turn": functools.partial(run_baseline, "multi_turn"),
}

_RUNTIME: Runtime | None = None


def _init_worker(model: str | None, threads: int) -> None:
    global _RUNTIME
    torch.set_num_threads(threads)
    _RUNTIME = load_runtime(model, engine="hf", device="cpu")


def _run_task(task: tuple) -> tuple:
    method, p_index, problem, seed, budget, sdpo = task
    t0 = time.perf_counter()
    out = METHODS[method](_RUNTIME, problem, seed, budget, sdpo)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{method:>10} problem {p_index} seed {seed}: first pass {out['first_pass']}", flush=True)
    return method, p_index, seed, out


def exact_best_of_k(runtime: Runtime, problems: list[dict], budget: int) -> dict:
    """Best-of-k's expected discovery from the base model's p(correct answer), per problem."""
    trainer = runtime.trainer
    trainer.reset(runtime.defaults)
    with trainer.model.disable_adapter():
        ps = []
        for problem in problems:
            cases = problem["verifier"]["cases"]
            answer = " ".join(f"{k}={v}" for k, v in cases.items())
            ps.append(answer_prob(trainer.model, trainer.tokenizer, problem["prompt"], answer))
    return {
        "discovery_at_k": {
            k: statistics.fmean(1 - (1 - p) ** k for p in ps) for k in KS if k <= budget
        },
        "mean_attempts": statistics.fmean((1 - (1 - p) ** budget) / p for p in ps),
        "mean_attempts_uncapped": statistics.fmean(1 / p for p in ps),
        "solved_fraction": statistics.fmean(1 - (1 - p) ** budget for p in ps),
        "p_correct": ps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="discovery")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--methods", default="sdpo,best_of_k,multi_turn,best_of_k_exact")
    parser.add_argument("--model", default=None)
    parser.add_argument("--sdpo", default="{}", help="JSON overrides of the SDPO settings")
    parser.add_argument("--tag", default="", help="suffix of the results files")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=1, help="processes (each loads the model)")
    parser.add_argument(
        "--export",
        metavar="FILE",
        help="write the suite as `sdpo bench` JSONL (budget and --sdpo applied) and exit",
    )
    args = parser.parse_args()
    problems = SUITES[args.suite][: args.problems]
    sdpo = json.loads(args.sdpo)
    if args.export:  # `sdpo bench FILE --seeds N` adds seeds 0..N-1, as the runs here do
        lines = [json.dumps(_with_budget(p, args.budget, sdpo)) + "\n" for p in problems]
        Path(args.export).write_text("".join(lines))
        print(f"wrote {args.export}: {len(problems)} problems")
        return
    methods = args.methods.split(",")
    tasks = [
        (m, i, p, seed, args.budget, sdpo)
        for m in methods
        if m != "best_of_k_exact"
        for i, p in enumerate(problems)
        for seed in range(args.seeds)
    ]
    t0 = time.perf_counter()
    if args.jobs > 1:
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.jobs, _init_worker, (args.model, args.threads)) as pool:
            done = pool.map(_run_task, tasks, chunksize=1)
    else:
        _init_worker(args.model, args.threads)
        done = [_run_task(t) for t in tasks]
    if _RUNTIME is None:
        _init_worker(args.model, args.threads)
    summary: dict[str, dict] = {}
    for method in methods:
        if method == "best_of_k_exact":
            summary[method] = exact_best_of_k(_RUNTIME, problems, args.budget)
            continue
        runs = [{"problem": i, "seed": s, **out} for m, i, s, out in done if m == method]
        summary[method] = {
            **summarise([r["first_pass"] for r in runs], args.budget),
            "seconds": sum(r["seconds"] for r in runs),
            "runs": runs,
        }
    title = f"{args.suite}: {len(problems)} problems x {args.seeds} seeds, budget {args.budget}"
    print(f"\n{title}")
    ks = [k for k in KS if k <= args.budget]
    print(f"{'method':>15} {'mean att.':>9} {'solved':>7}  " + " ".join(f"d@{k:<5}" for k in ks))
    for method, s in summary.items():
        cells = " ".join(f"{v:<7.2f}" for v in s["discovery_at_k"].values())
        print(f"{method:>15} {s['mean_attempts']:>9.1f} {s['solved_fraction']:>7.2f}  {cells}")
    out = {
        "suite": args.suite,
        "budget": args.budget,
        "problems": len(problems),
        "seeds": args.seeds,
        "sdpo_overrides": sdpo,
        "sdpo_settings": _RUNTIME.defaults.merged(
            {**problems[0].get("sdpo", {}), **sdpo}
        ).model_dump(exclude={"reprompt_template", "solution_template", "feedback_template"}),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "methods": summary,
    }
    if "sdpo" in summary:
        for method in summary:
            if method != "sdpo":
                ratio = summary[method]["mean_attempts"] / summary["sdpo"]["mean_attempts"]
                out[f"ratio_{method}_over_sdpo"] = ratio
    RESULTS.mkdir(exist_ok=True)
    stem = f"discovery_{args.suite}{args.tag}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote benchmarks/results/{stem}.json (curves: benchmarks/plot_discovery.py FILE)")
    for key, value in out.items():
        if key.startswith("ratio_"):
            name = key.removeprefix("ratio_").replace("_over_", "/")
            print(f"ratio {name} = {value:.2f}")


if __name__ == "__main__":
    main()
