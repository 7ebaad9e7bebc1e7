"""Talked-to runs (`_Slot.talk`): all tests of an attempt in one process, as LiveCodeBench's
`run_test` grades them, and assert tests in two processes (the solution's, the test code's).

The parent sends each test when the one before it has ended, enforces each test's time limit
(killing the run at it, so the verdict names the test), and hands each result to `judge`,
which compares values and says whether to go on: LiveCodeBench stops at the first failing
test, and so does this. Tests not run come back "skipped".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sdpo_core.verifiers.sandbox import (
    Job,
    LiveRun,
    RunResult,
    Status,
    _Slot,
    report_fields,
)

Judge = Callable[[int, RunResult], bool]
MAX_ARGS_CHARS = 1_000_000  # a call's arguments, as the test process writes them
MAX_ERROR_CHARS = 1000


def _started(event: dict[str, Any]) -> bool:
    return any(k in event for k in ("ready", "compile_error", "exception", "exit_called"))


def _skipped(run: LiveRun, n: int) -> list[RunResult]:
    return [RunResult(status="skipped", mode=run.slot.settings.mode) for _ in range(n)]


def _status(event: dict[str, Any], run: LiveRun, need: str | None = None) -> Status:
    """A test's status from its report: `need` names a field an ok report must carry."""
    fields = report_fields(event)
    if run.over:
        return "output_limit"
    if fields.get("exception") == "MemoryError":
        return "memory"
    if "exception" in fields or "exit_called" in fields:
        return "error"
    if need is not None and fields.get(need) is not True:
        return "error"
    return "ok"


def _stopped(run: LiveRun) -> Status:
    """The status of a test during which the run ended or its time ran out."""
    if run.reply is None:
        run.kill()
        return "timeout"
    return run.ended_status()


def _start(run: LiveRun, n: int, timeout_s: float) -> list[RunResult] | None:
    """Wait until the run is ready (None), or the results of all `n` tests when it never is:
    a compile error fails every test; any other failure fails the first, the rest are
    skipped."""
    begin = time.monotonic()
    event = run.wait(_started, begin + timeout_s)
    if event is not None and "ready" in event:
        return None
    wall = time.monotonic() - begin
    if event is not None and isinstance(event.get("compile_error"), str):
        first = run.result("compile_error", event, wall)
        rest = [RunResult("compile_error", result=first.result, mode=first.mode)] * (n - 1)
        return [first, *rest]
    status = _stopped(run) if event is None else _status(event, run)
    first = run.result("error" if status == "ok" else status, event or {}, wall)
    return [first, *_skipped(run, n - 1)]


def run_tests(
    slot: _Slot, job: Job, messages: list[dict[str, Any]], judge: Judge
) -> list[RunResult]:
    """The attempt's tests (harness tests) in one run, in order; `messages[k]` is what test k
    gets ({"input": stdin text} or {"args": [...]})."""
    run = slot.talk(job)
    try:
        results = _start(run, len(messages), job.timeout_s)
        if results is not None:
            return results
        results = []
        for k, message in enumerate(messages):
            run.take()
            begin = time.monotonic()
            run.send({"test": k, **message})
            event = run.wait(lambda e, k=k: e.get("test") == k, begin + job.timeout_s)
            wall = time.monotonic() - begin
            status = _stopped(run) if event is None else _status(event, run)
            results.append(run.result(status, event or {}, wall))
            if status != "ok" or not judge(k, results[-1]):
                break
        return results + _skipped(run, len(messages) - len(results))
    finally:
        run.close()


def _clean_reply(reply: Any) -> list[Any]:
    """The solution's answer to a call, passed on only in one of its three shapes."""
    if isinstance(reply, list) and len(reply) == 2 and reply[0] == "value":
        if isinstance(reply[1], str) and len(reply[1]) <= MAX_ARGS_CHARS:
            return reply
    if isinstance(reply, list) and len(reply) == 2 and reply[0] == "exit":
        if isinstance(reply[1], int) and not isinstance(reply[1], bool):
            return reply
    if isinstance(reply, list) and len(reply) == 3 and reply[0] == "raise":
        if isinstance(reply[1], str) and isinstance(reply[2], str):
            return ["raise", reply[1][:100], reply[2][:MAX_ERROR_CHARS]]
    return ["raise", "TypeError", "the solution's process answered with no value"]


def run_asserts(slots: list[_Slot], solution: Job, tests: Job, judge: Judge) -> list[RunResult]:
    """Assert tests: the test code runs in its own process (harness check), on its own slot;
    each call it makes of the solution's names goes, as values, through us to the solution's
    process (harness serve), which never sees the test code nor touches its process. A test's
    verdict is the test process's report."""
    n = len(tests.tests)
    sol = slots[0].talk(solution)
    chk: LiveRun | None = None
    try:
        failed = _start(sol, n, solution.timeout_s)
        if failed is not None:
            return failed
        chk = slots[1].talk(tests)
        failed = _start(chk, n, tests.timeout_s)
        if failed is not None:
            return failed
        results: list[RunResult] = []
        for k in range(n):
            chk.take()
            sol.take()
            begin = time.monotonic()
            deadline = begin + tests.timeout_s
            chk.send({"test": k})
            result = _assert_test(sol, chk, k, deadline)
            result.wall_s = time.monotonic() - begin
            results.append(result)
            if result.status != "ok" or not judge(k, result):
                break
        return results + _skipped(chk, n - len(results))
    finally:
        for run in (chk, sol):
            if run is not None:
                if run.reply is None and run.over:
                    run.kill()
                run.close()


def _assert_test(sol: LiveRun, chk: LiveRun, k: int, deadline: float) -> RunResult:
    names = set(chk.job.names)
    while True:
        event = chk.wait(lambda e: e.get("test") == k or "call" in e, deadline)
        if event is None:
            sol.kill()
            return chk.result(_stopped(chk), {}, 0.0)
        if "call" not in event:
            status = _status(event, chk, need="ok")
            if sol.over:
                status = "output_limit"
            return chk.result(status, event, 0.0)
        name, args, seq = event.get("call"), event.get("args"), event.get("seq")
        if not (
            name in names
            and isinstance(args, str)
            and len(args) <= MAX_ARGS_CHARS
            and isinstance(seq, int)
        ):
            continue  # the test process only asks in this shape; it will time out otherwise
        sol.send({"call": name, "args": args, "seq": seq})
        answer = sol.wait(lambda e, seq=seq: e.get("seq") == seq and "reply" in e, deadline)
        if answer is None:  # the solution's process ran out of time, or ended
            status = _stopped(sol)
            chk.kill()
            _, err = sol.take()
            result = chk.result(status, {}, 0.0)
            result.stderr = err
            reply = sol.reply or {}
            result.exit_code, result.signal = reply.get("exit"), reply.get("signal")
            return result
        chk.send({"seq": seq, "reply": _clean_reply(answer.get("reply"))})
