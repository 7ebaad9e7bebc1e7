"""Discovery statistics, as the SDPO paper reports them: discovery time is the index of a
run's first passing attempt (counting every generation); discovery@k is the fraction of runs
discovered by attempt k; the mean counts an unsolved run at its budget. Used by suites'
reports and by benchmarks/discovery.py (one definition)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from sdpo_core.contract import (
    TERMINAL_STATUSES,
    Method,
    MethodSummary,
    SuiteProblemRow,
    SuiteReport,
    SuiteRun,
)
from sdpo_core.problem import ProblemSpec

KS = (16, 32, 64, 128, 256, 512, 1024, 2048, 3000)


def ks_for(budget: int) -> list[int]:
    """The attempt counts at which discovery@k is reported for runs of at most `budget`."""
    return [k for k in KS if k <= budget]


def summarise(found: list[int | None], budget: int) -> dict:
    """discovery@k, mean attempts (unsolved at `budget`) and solved fraction of runs whose
    first passing attempts are `found` (None: not solved)."""
    return {
        "discovery_at_k": {
            k: sum(f is not None and f <= k for f in found) / len(found) for k in ks_for(budget)
        },
        "mean_attempts": statistics.fmean(budget if f is None else f for f in found),
        "solved_fraction": sum(f is not None for f in found) / len(found),
    }


def _finished(runs: Iterable[SuiteRun]) -> list[SuiteRun]:
    return [r for r in runs if r.status in TERMINAL_STATUSES]


def _mean(runs: list[SuiteRun]) -> float | None:
    if not runs:
        return None
    return statistics.fmean(r.solved_attempt or r.budget for r in runs)


def method_summaries(runs: list[SuiteRun]) -> dict[str, MethodSummary]:
    """Each method's summary over the suite's runs; ratios are to SDPO's mean."""
    out: dict[str, MethodSummary] = {}
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        done = _finished(mine)
        budget = max(r.budget for r in mine)
        curve = (
            {
                k: sum(r.solved_attempt is not None and r.solved_attempt <= k for r in done)
                / len(done)
                for k in ks_for(budget)
            }
            if done
            else {}
        )
        out[method] = MethodSummary(
            runs=len(mine),
            finished=len(done),
            solved=sum(r.solved_attempt is not None for r in done),
            discovery_at_k=curve,
            mean_attempts=_mean(done),
        )
    sdpo = out.get("sdpo")
    if sdpo is not None and sdpo.mean_attempts:
        for summary in out.values():
            if summary.mean_attempts is not None:
                summary.ratio_to_sdpo = summary.mean_attempts / sdpo.mean_attempts
    return out


def problem_rows(runs: list[SuiteRun]) -> list[SuiteProblemRow]:
    """Per problem: each method's mean attempts and solved count over its finished seeds."""
    rows = []
    for problem in sorted({r.problem for r in runs}):
        mine = [r for r in runs if r.problem == problem]
        methods = list(dict.fromkeys(r.method for r in mine))
        done = {m: _finished(r for r in mine if r.method == m) for m in methods}
        rows.append(
            SuiteProblemRow(
                problem=problem,
                mean_attempts={m: _mean(done[m]) for m in methods},
                solved={m: sum(r.solved_attempt is not None for r in done[m]) for m in methods},
            )
        )
    return rows


def suite_report(runs: list[SuiteRun], **fields: object) -> SuiteReport:
    """The report of a suite's runs as they stand; `fields` are the suite's own (id, name,
    model, methods, seeds, problems, ...)."""
    done = sum(r.status in TERMINAL_STATUSES or r.status == "expired" for r in runs)
    return SuiteReport.model_validate(
        {
            **fields,
            "status": "done" if done == len(runs) else "running",
            "total": len(runs),
            "done": done,
            "summary": method_summaries(runs),
            "table": problem_rows(runs),
            "runs": runs,
        }
    )


def suite_runs(
    specs: list[ProblemSpec], methods: list[Method], seeds: int
) -> list[tuple[ProblemSpec, dict]]:
    """Each run's spec (the problem with its method and seed: seeds 0.. added to the
    problem's own sdpo.seed) and its place in the suite."""
    out = []
    for i, spec in enumerate(specs):
        base = spec.sdpo.seed if "seed" in spec.sdpo.model_fields_set else 0
        for method in methods:
            for s in range(seeds):
                run = spec.with_sdpo(seed=base + s).model_copy(update={"method": method})
                place = {"problem": i, "method": method, "seed": base + s}
                out.append((run, {**place, "budget": spec.budget.max_attempts}))
    return out
