"""A worker's Prometheus metrics: prometheus_client objects in the worker's own process,
served by the worker over HTTP (`SDPO_WORKER_METRICS_PORT`), scraped per worker.

Counts are of what the worker wrote to Redis: an attempt or step that a resumed run
replays (already logged by the worker before it) is not counted again.

Port: a worker binds the first free port from `SDPO_WORKER_METRICS_PORT` up (at most
`PORT_TRIES` ports), so several workers on one host do not collide; the port it got is in
its log and in its heartbeat (`/readyz` with an API key lists it). 0 turns the endpoint off.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

log = logging.getLogger("sdpo.worker")

PORT_TRIES = 64
SOLVE_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# StepEvent.metrics key -> (histogram name, help)
STEP_PARTS = {
    "time_generate": ("sdpo_step_generate_seconds", "Step time spent generating attempts."),
    "time_verify": ("sdpo_step_verify_seconds", "Step time spent in the verifier."),
    "time_teacher": (
        "sdpo_step_teacher_seconds",
        "Step time spent in the self-teacher's forward passes.",
    ),
    "time_student": (
        "sdpo_step_student_seconds",
        "Step time spent in student forward/backward and the optimizer.",
    ),
}

# Rollout correction (sdpo.rollout_is) per step: the weights exp(trainer - sampler log-prob)
# are ~1 when the engine samples the model being trained; a mean far from 1, a capped
# fraction above 0 or a gap of several nats means it does not (dtype, kernels, template).
# StepEvent.metrics key -> (histogram name, help, buckets)
ROLLOUT_PARTS = {
    "rollout_is_mean": (
        "sdpo_step_rollout_is_mean",
        "Mean uncapped rollout-correction weight of a step's response tokens (1: the engine "
        "samples the trainer's model).",
        (0.5, 0.8, 0.9, 0.95, 0.99, 1.01, 1.05, 1.1, 1.25, 1.5, 2, 5),
    ),
    "rollout_is_capped_frac": (
        "sdpo_step_rollout_is_capped_fraction",
        "Fraction of a step's response tokens whose rollout weight hit rollout_is_cap.",
        (0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1),
    ),
    "rollout_logp_gap_max": (
        "sdpo_step_rollout_logp_gap_max",
        "Largest |trainer - sampler| log-prob (nats) of a step's response tokens.",
        (0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 20),
    ),
}


class WorkerMetrics:
    """The counters and histograms of one worker, in a registry of its own."""

    def __init__(self) -> None:
        self._server: Any = None
        self.registry = r = CollectorRegistry()
        self.attempts = Counter("sdpo_attempts", "Attempts generated.", registry=r)
        self.attempts_passed = Counter(
            "sdpo_attempts_passed", "Attempts that passed the verifier.", registry=r
        )
        self.verifier_runs = Counter("sdpo_verifier_runs", "Verifier runs.", registry=r)
        self.verifier_errors = Counter(
            "sdpo_verifier_errors",
            "Attempts whose `python` verifier itself failed (raised, overran its limits or "
            "returned no verdict); such an attempt fails without feedback.",
            registry=r,
        )
        self.steps = Counter("sdpo_steps", "SDPO steps taken.", registry=r)
        self.problems_finished = Counter(
            "sdpo_problems_finished",
            "Problems this worker brought to a terminal status.",
            ["status"],
            registry=r,
        )
        self.solve_seconds = Histogram(
            "sdpo_solve_seconds",
            "Wall time of a problem from its first start to its terminal status.",
            buckets=SOLVE_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "sdpo_step_seconds", "Wall time of one SDPO step.", buckets=STEP_BUCKETS, registry=r
        )
        self.step_parts = {
            key: Histogram(name, doc, buckets=STEP_BUCKETS, registry=r)
            for key, (name, doc) in STEP_PARTS.items()
        }
        self.adapter_swap_seconds = Histogram(
            "sdpo_adapter_swap_seconds",
            "Time to save and hot-swap the adapter into the engine.",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.rollout = {
            key: Histogram(name, doc, buckets=buckets, registry=r)
            for key, (name, doc, buckets) in ROLLOUT_PARTS.items()
        }
        self.updates_skipped_nonfinite = Counter(
            "sdpo_updates_skipped_nonfinite",
            "SDPO updates skipped for a non-finite gradient norm (no optimizer step, no EMA).",
            registry=r,
        )

    def watch(self, phases: Any, capacity: int, active: Any) -> None:
        """Expose the worker's slots and phases: `phases` a PhaseClock (sdpo_core/slots.py),
        `active()` the problems running now."""
        Gauge(
            "sdpo_worker_capacity", "Problems the worker runs at once.", registry=self.registry
        ).set(capacity)
        Gauge(
            "sdpo_worker_active_problems",
            "Problems the worker is running now.",
            registry=self.registry,
        ).set_function(lambda: float(active()))
        self.registry.register(_PhaseCollector(phases))

    def attempt(self, passed: bool, verifier_error: bool = False) -> None:
        self.attempts.inc()
        self.verifier_runs.inc()
        if passed:
            self.attempts_passed.inc()
        if verifier_error:
            self.verifier_errors.inc()

    def step(self, metrics: Mapping[str, Any]) -> None:
        """One step, from its StepEvent.metrics (`time_*` seconds, `rollout_*` when the
        rollout correction ran, `skipped_nonfinite` updates)."""
        self.steps.inc()
        parts = (*STEP_PARTS, "time_export", "time_swap")
        self.step_seconds.observe(sum(float(metrics.get(k, 0.0)) for k in parts))
        for key, hist in self.step_parts.items():
            if key in metrics:
                hist.observe(float(metrics[key]))
        if "time_swap" in metrics:
            swap = float(metrics["time_swap"]) + float(metrics.get("time_export", 0.0))
            self.adapter_swap_seconds.observe(swap)
        for key, hist in self.rollout.items():
            if math.isfinite(value := float(metrics.get(key, math.nan))):
                hist.observe(value)  # a non-finite one (a skipped update's) would poison _sum
        self.updates_skipped_nonfinite.inc(float(metrics.get("skipped_nonfinite", 0.0)))

    def finished(self, status: str, seconds: float | None) -> None:
        self.problems_finished.labels(status).inc()
        if seconds is not None:
            self.solve_seconds.observe(max(0.0, seconds))

    def serve(self, host: str, port: int, tries: int = PORT_TRIES) -> int | None:
        """Serve /metrics on the first free port from `port` up; the port, or None (port 0:
        off). Raises OSError when none of the `tries` ports is free."""
        if not port:
            return None
        for candidate in range(port, min(port + tries, 65536)):
            try:
                self._server, _ = start_http_server(candidate, addr=host, registry=self.registry)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            log.info("worker metrics on http://%s:%d/metrics", host, candidate)
            return candidate
        raise OSError(errno.EADDRINUSE, f"no free metrics port in {port}..{port + tries - 1}")

    def close(self) -> None:
        """Stop serving /metrics (the port is free again)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


class _PhaseCollector:
    """sdpo_worker_phase_busy_seconds{phase}: wall time during which at least one of the
    worker's problems was in the phase (its rate is the phase's busy fraction)."""

    def __init__(self, phases: Any) -> None:
        self.phases = phases

    def collect(self) -> Any:
        family = CounterMetricFamily(
            "sdpo_worker_phase_busy_seconds",
            "Seconds at least one of the worker's problems spent in each phase (generation, "
            "verification, training, export).",
            labels=["phase"],
        )
        for phase, seconds in self.phases.busy_seconds().items():
            family.add_metric([phase], seconds)
        yield family
