"""The sandbox for untrusted code: model-written solutions and users' `verify` functions.

A pool of slots, each an unprivileged uid, a cgroup and a warm fork server living in its own
namespaces and minimal read-only root; per run the server forks one process under rlimits and a
seccomp filter. docs/verifiers.md describes the whole world a run sees. Nothing here knows of
SDPO: a caller describes a run (`Job`) and gets back what happened (`RunResult`); comparing
values and wording feedback are the caller's.

Public API:
    SandboxSettings, SandboxError        the operator's settings (SDPO_SANDBOX_*), the failure
    Sandbox(settings).run(job) / .run_many(jobs, stop) / .map(fn, items, n)
    get_sandbox(), configure_sandbox(settings)   the process-wide pool
    Job, RunResult, Status               what a run is given, and what comes back
    run_tests(slot, job, messages, judge)        all tests of an attempt in one talked-to run
    run_asserts(slots, solution, tests, judge)   assert tests: solution and test code apart
"""

from sdpo_sandbox._interactive import Judge, run_asserts, run_tests
from sdpo_sandbox._pool import (
    Job,
    RunResult,
    Sandbox,
    SandboxError,
    SandboxSettings,
    Status,
    configure_sandbox,
    get_sandbox,
)

__all__ = [
    "Job",
    "Judge",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "SandboxSettings",
    "Status",
    "configure_sandbox",
    "get_sandbox",
    "run_asserts",
    "run_tests",
]
