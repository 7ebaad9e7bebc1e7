"""The sandbox for untrusted code: model-written solutions and users' `verify` functions.

Each of `slots` concurrent slots owns an unprivileged uid, a cgroup and a warm fork server that
lives in the slot's own namespaces and minimal read-only root. Per run the server forks one
process, which gets a private /tmp, rlimits, the slot uid with no_new_privs, and a seccomp
filter before the code runs under the in-run harness; afterwards the server kills whatever the
run left in the slot's PID namespace. Output is capped. Forking a warm server instead of
spawning an interpreter is most of the sandbox's speed (benchmarks/verifier_throughput.py
compares it with LiveCodeBench's own grader). docs/verifiers.md describes the whole world a
run sees. Nothing here knows of SDPO: a caller describes a run (`Job`) and gets back what
happened (`RunResult`); comparing values and wording feedback are the caller's.

Public API (the modules behind it are private):
    SandboxSettings, SandboxError    the operator's settings (SDPO_SANDBOX_*), the failure
    Sandbox(settings)                .run(job), .run_many(jobs, stop), .map(fn, items, n)
    get_sandbox(), configure_sandbox(settings)    the process-wide pool
    Job, RunResult, Status           what a run is given, and what comes back
    run_tests(slot, job, messages, judge)        all tests of an attempt in one talked-to run
    run_asserts(slots, solution, tests, judge)   assert tests: solution and test code apart

Modules:
    _settings.py     SandboxSettings, SandboxError
    _protocol.py     Job, RunResult, Status; reading the server's reply and the run's reports
    _pool.py         Sandbox (the slots, uid claims, parallel runs), get_sandbox
    _slot.py         one slot, parent side: its fork server's process, requests, one-shot runs
    _interactive.py  runs the parent talks to while they run: run_tests, run_asserts
    _cgroup.py       one cgroup per slot (v1 or v2)
    _forkserver.py   the fork server (stdlib only, run by the sandbox python)
    _harness.py      what a run's process executes (stdlib only, loaded by the fork server)
    _seccomp.py      the seccomp-BPF filter (stdlib only, loaded by the fork server)
"""

from sdpo_sandbox._interactive import Judge, run_asserts, run_tests
from sdpo_sandbox._pool import Sandbox, configure_sandbox, get_sandbox
from sdpo_sandbox._protocol import Job, RunResult, Status
from sdpo_sandbox._settings import SandboxError, SandboxSettings

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
