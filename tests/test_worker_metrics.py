"""A worker's metrics: prometheus_client objects served on the worker's own port; a second
worker on the same host takes the next free port. (A real worker solving a problem is
scraped in test_service_e2e.py; two workers on one host in test_service_crash.py.)"""

from __future__ import annotations

import math
import socket

import pytest
from service_fixtures import parse_exposition, scrape

from service.local import free_port
from service.worker_metrics import WorkerMetrics


def test_a_taken_port_moves_the_next_worker_up_and_zero_is_off() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    first, second = WorkerMetrics(), WorkerMetrics()
    try:
        got = first.serve("127.0.0.1", port)
        assert got is not None and got > port
        again = second.serve("127.0.0.1", port)
        assert again is not None and again > got
        first.attempt(passed=True)
        first.attempt(passed=False, verifier_error=True)
        first.step({"time_generate": 0.5, "time_verify": 0.25, "time_swap": 0.1})
        first.finished("solved", 12.0)
        m = scrape(got)
        assert m["sdpo_attempts_total"] == 2 and m["sdpo_attempts_passed_total"] == 1
        assert m["sdpo_verifier_runs_total"] == 2 and m["sdpo_steps_total"] == 1
        assert m["sdpo_verifier_errors_total"] == 1
        assert m['sdpo_problems_finished_total{status="solved"}'] == 1
        assert m['sdpo_solve_seconds_bucket{le="15.0"}'] == 1
        assert m["sdpo_step_seconds_sum"] == 0.85
        assert m["sdpo_step_generate_seconds_count"] == 1
        assert m["sdpo_adapter_swap_seconds_count"] == 1
        assert scrape(again)["sdpo_attempts_total"] == 0  # each worker its own registry
    finally:
        first.close()
        second.close()
        taken.close()
    assert WorkerMetrics().serve("127.0.0.1", 0) is None
    free = free_port()
    third = WorkerMetrics()
    assert third.serve("127.0.0.1", free) == free  # closed ports are free again
    third.close()


def _exposition(metrics: WorkerMetrics) -> dict[str, float]:
    """The registry's exposition text, parsed: {sample name with its labels: value}."""
    from prometheus_client import generate_latest

    return parse_exposition(generate_latest(metrics.registry).decode())


def test_rollout_correction_and_skipped_updates_of_real_steps(runtime) -> None:
    """Two real SDPO steps on the bundled model: one normal (the hf engine samples the
    trainer's own weights: rollout weights ~1, nothing capped, gap < 1e-3), one whose training
    forward is made infinite (its update skipped and counted)."""
    from sdpo_core.contract import StepPayload
    from sdpo_core.problem import parse_problem
    from sdpo_core.solve import solve
    from sdpo_core.toy import make_problem

    def one_step() -> dict[str, float]:
        data = make_problem(9001, 6, max_attempts=16)  # one step, then the budget
        data["sdpo"].update(samples_per_step=8, lora_rank=4, lr=2e-3)
        events: list = []
        solve(parse_problem(data), runtime, on_event=events.append)
        (step,) = [e for e in events if isinstance(e, StepPayload)]
        return step.metrics

    normal = one_step()
    norm = runtime.trainer.base.get_decoder().norm
    hook = norm.register_forward_hook(lambda m, _i, out: out * float("inf") if m.training else out)
    try:
        skipped = one_step()
    finally:
        hook.remove()
    assert skipped["skipped_nonfinite"] == 1.0
    wm = WorkerMetrics()
    wm.step(normal)
    wm.step(skipped)
    m = _exposition(wm)
    assert m["sdpo_steps_total"] == 2
    assert m["sdpo_updates_skipped_nonfinite_total"] == 1
    # the skipped step's mean weight is not finite (its forward was not): not observed, so
    # the histograms' sums stay usable
    assert not math.isfinite(skipped["rollout_is_mean"])
    assert m["sdpo_step_rollout_is_mean_count"] == 1
    assert m['sdpo_step_rollout_is_mean_bucket{le="0.99"}'] == 0
    assert m['sdpo_step_rollout_is_mean_bucket{le="1.01"}'] == 1
    assert m["sdpo_step_rollout_is_mean_sum"] == pytest.approx(normal["rollout_is_mean"])
    for key, name in [
        ("rollout_is_capped_frac", "sdpo_step_rollout_is_capped_fraction"),
        ("rollout_logp_gap_max", "sdpo_step_rollout_logp_gap_max"),
    ]:
        finite = [v for v in (normal[key], skipped[key]) if math.isfinite(v)]
        assert m[f"{name}_count"] == len(finite) and m[f"{name}_sum"] == pytest.approx(sum(finite))
    # the normal step: nothing capped, the gap under 1e-3 nats
    assert m['sdpo_step_rollout_is_capped_fraction_bucket{le="0.0"}'] >= 1
    assert m['sdpo_step_rollout_logp_gap_max_bucket{le="0.001"}'] >= 1
