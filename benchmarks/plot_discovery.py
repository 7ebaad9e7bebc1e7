"""Draw discovery@k curves from benchmarks/discovery.py's results files.

    python benchmarks/plot_discovery.py            # the README's figure (very hard suite)
    python benchmarks/plot_discovery.py benchmarks/results/discovery_discovery.json \
        benchmarks/results/discovery_discovery_best_of_k.json --out discovery_n4.png

discovery@k = the fraction of runs (problems x seeds) whose first passing attempt came within
k attempts. The files must be runs of one suite with one budget, problem count and seed count;
their methods are drawn on one axis (a method in several files: the first file's). Sampled
methods are step curves from each run's first pass; `best_of_k_exact` is the expectation from
the base model's p(correct) per problem, 1 - (1 - p)^k averaged over the problems.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_INPUTS = [
    RESULTS / "discovery_very_hard.json",
    RESULTS / "discovery_very_hard_best_of_k.json",
]
DEFAULT_OUT = HERE.parent / "docs" / "img" / "discovery_very_hard.png"
LABELS = {
    "sdpo": "SDPO",
    "multi_turn": "multi-turn (feedback in context)",
    "best_of_k": "best-of-k (sampled)",
    "best_of_k_exact": "best-of-k (exact, from p(correct))",
}
STYLES = {"sdpo": "-", "multi_turn": "-.", "best_of_k": ":", "best_of_k_exact": "--"}
SUITE_NAMES = {
    "discovery": "N = 4 suite",
    "very_hard": "very hard suite (N = 6..7)",
    "fresh_discovery": "fresh N = 4 suite",
    "fresh_very_hard": "fresh very hard suite (N = 6..7)",
}


def merge(results: list[dict]) -> dict:
    """One suite's methods from several results files; refuses files of different runs."""
    first = results[0]
    shape = [(r.get("suite"), r["budget"], r["problems"], r["seeds"]) for r in results]
    if len(set(shape)) != 1:
        raise SystemExit(f"results of different suites/budgets/sizes: {shape}")
    methods: dict[str, dict] = {}
    for r in results:
        for name, summary in r["methods"].items():
            methods.setdefault(name, summary)
    return {**first, "methods": methods}


def curve(name: str, summary: dict, xs: list[int]) -> list[float]:
    if name == "best_of_k_exact":
        ps = summary["p_correct"]
        return [statistics.fmean(1 - (1 - p) ** x for p in ps) for x in xs]
    found = [r["first_pass"] for r in summary["runs"]]
    return [sum(f is not None and f <= x for f in found) / len(found) for x in xs]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget, runs = result["budget"], result["problems"] * result["seeds"]
    xs = list(range(1, budget + 1))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    order = [m for m in LABELS if m in result["methods"]]
    order += [m for m in result["methods"] if m not in LABELS]
    for name in order:
        s = result["methods"][name]
        label = f"{LABELS.get(name, name)}: mean {s['mean_attempts']:.0f}"
        if name != "best_of_k_exact":
            label += f", {round(s['solved_fraction'] * runs)}/{runs} solved"
        ax.plot(xs, curve(name, s, xs), STYLES.get(name, "-"), label=label)
    suite = SUITE_NAMES.get(result.get("suite", ""), result.get("suite", "?"))
    ax.set_title(
        f"{suite}: {result['problems']} problems x {result['seeds']} seeds, budget {budget}"
    )
    ax.set_xscale("log")
    ax.set_xlim(10, budget)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("attempts k (every generation counted)")
    ax.set_ylabel("discovery@k (fraction of runs solved)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="*", type=Path, default=DEFAULT_INPUTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    result = merge([json.loads(p.read_text()) for p in args.results])
    plot(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
