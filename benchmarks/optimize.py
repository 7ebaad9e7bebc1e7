"""Best score against attempts on a score objective (examples/toy_optimize.json by default).

    python benchmarks/optimize.py --seeds 3 [--sdpo '{"demonstration": "best_so_far"}'] [--tag T]

Runs the problem file (a `{"maximize": true}` objective: the run goes to its budget) with the
bundled model on CPU (hf engine, one torch thread: deterministic per seed), sdpo.seed 0..N-1,
the model's defaults, the file's sdpo block, then --sdpo; records the best score so far at
each power-of-two attempt count and the budget. Prints the per-seed and mean curves; writes
benchmarks/results/optimize_FILE[TAG].json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sdpo_core.contract import AttemptPayload
from sdpo_core.problem import parse_problem
from sdpo_core.runtime import load_runtime
from sdpo_core.solve import solve

ROOT = Path(__file__).resolve().parents[1]


def best_curve(scores: list[float], budget: int) -> dict[int, float]:
    """The best score among the first k attempts, at k = 16, 32, ... and the budget."""
    marks = [k for k in (2**i for i in range(4, 20)) if k < budget] + [budget]
    return {k: max(scores[:k]) for k in marks if k <= len(scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problem", default="examples/toy_optimize.json")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sdpo", default="{}", help="JSON overrides of the SDPO settings")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runtime = load_runtime(None, engine="hf", device="cpu")
    data = json.loads((ROOT / args.problem).read_text())
    overrides = json.loads(args.sdpo)
    runs = []
    for seed in range(args.seeds):
        problem = {**data, "sdpo": {**data.get("sdpo", {}), **overrides, "seed": seed}}
        scores: list[float] = []

        def on_event(event, scores=scores) -> None:
            if isinstance(event, AttemptPayload):
                scores.append(event.verdict.score)

        t0 = time.perf_counter()
        result = solve(parse_problem(problem), runtime, on_event=on_event)
        curve = best_curve(scores, result.attempts)
        runs.append(
            {
                "seed": seed,
                "best_score": result.best_score,
                "best_attempt": result.best_attempt,
                "curve": curve,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(f"seed {seed}: best {result.best_score} at attempt {result.best_attempt}; {curve}")
    marks = list(runs[0]["curve"])
    mean = {k: round(statistics.fmean(r["curve"][k] for r in runs), 4) for k in marks}
    print(f"mean best score by attempts: {mean}")
    out = {
        "problem": args.problem,
        "seeds": args.seeds,
        "sdpo_overrides": overrides,
        "mean_best_by_attempts": mean,
        "runs": runs,
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"optimize_{Path(args.problem).stem}{args.tag}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
