"""A worker's metrics: prometheus_client objects served on the worker's own port; a second
worker on the same host takes the next free port. (A real worker solving a problem is
scraped in test_service_e2e.py; two workers on one host in test_service_crash.py.)"""

from __future__ import annotations

import socket

from service_fixtures import scrape

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
