"""Talked-to runs (`talk`): all tests of an attempt in one process, as LiveCodeBench's
`run_test` grades them, and assert tests in two processes (the solution's, the test code's).

The parent sends each test when the one before it has ended, enforces each test's time limit
(killing the run at it, so the verdict names the test), and hands each result to `judge`,
which compares values and says whether to go on: LiveCodeBench stops at the first failing
test, and so does this. Tests not run come back "skipped".
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from sdpo_sandbox._protocol import (
    Job,
    RunResult,
    Status,
    _check_reply,
    report_fields,
    report_line,
    with_memory_kills,
)
from sdpo_sandbox._settings import SandboxError
from sdpo_sandbox._slot import _Slot

Judge = Callable[[int, RunResult], bool]
MAX_ARGS_CHARS = 1_000_000  # a call's arguments, as the test process writes them
MAX_ERROR_CHARS = 1000
RES_CAP = 16 * 1024 * 1024  # result channel bytes per test of a talked-to run


class LiveRun:
    """A run its parent talks to while it runs (`talk`): messages go in as JSON lines
    on its message channel, reports come out on the result channel (only lines carrying the
    run's nonce count), and `take` hands over the stdout and stderr written since the last
    call. Deadlines are the caller's: `wait` returns at one, `kill` ends the run. `close`
    ends it and waits for the server's reply, after which the slot is free again."""

    def __init__(
        self,
        slot: _Slot,
        job: Job,
        nonce: str,
        out_r: int,
        err_r: int,
        res_r: int,
        msg_w: int,
        kill_w: int,
    ) -> None:
        assert slot.sock is not None
        self.slot, self.job, self.nonce = slot, job, nonce
        self.cap = slot.settings.max_output_bytes
        self.out, self.err, self.res = bytearray(), bytearray(), bytearray()
        self.res_bytes = 0
        self.events: collections.deque[dict[str, Any]] = collections.deque()
        self.reply: dict[str, Any] | None = None
        self.over = False  # stdout, stderr or the channel went over its cap (then killed)
        self.msg_w: int | None = msg_w
        self.kill_w = kill_w
        self.pending = b""
        self.bufs = {out_r: self.out, err_r: self.err, res_r: self.res}
        self.res_r = res_r
        self.sel = selectors.DefaultSelector()
        for fd in self.bufs:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
        os.set_blocking(msg_w, False)
        self.sock = slot.sock
        self.sock.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.watchdog = time.monotonic() + (job.budget_s or job.timeout_s) + 10.0

    def send(self, msg: dict[str, Any]) -> None:
        if self.msg_w is None or self.reply is not None:
            return
        if not self.pending:
            self.sel.register(self.msg_w, selectors.EVENT_WRITE)
        self.pending += (json.dumps(msg) + "\n").encode()

    def wait(
        self, want: Callable[[dict[str, Any]], bool], deadline: float
    ) -> dict[str, Any] | None:
        """The first report that `want` accepts (the ones before it are dropped), or None
        when the run ended or `deadline` passed first."""
        while True:
            while self.events:
                event = self.events.popleft()
                if want(event):
                    self._drain()  # what it wrote before the report belongs with it
                    return event
            now = time.monotonic()
            if self.reply is not None or now >= deadline:
                return None
            if now >= self.watchdog:  # the server does not answer: rebuild the slot
                self._lose()
                return None
            self._pump(min(deadline, self.watchdog) - now)

    def take(self) -> tuple[str, str]:
        """stdout and stderr since the last call."""
        out = self.out.decode("utf-8", "replace")
        err = self.err.decode("utf-8", "replace")
        self.out.clear()
        self.err.clear()
        self.res_bytes = 0
        return out, err

    def kill(self) -> None:
        try:
            os.write(self.kill_w, b"k")
        except OSError:
            pass

    def close(self) -> dict[str, Any]:
        """End the run (its message channel closes, so the harness returns) and wait for the
        server's reply; returns it."""
        if self.msg_w is not None:
            if self.pending:
                self.sel.unregister(self.msg_w)
            os.close(self.msg_w)
            self.msg_w = None
        grace = time.monotonic() + 2.0
        while self.reply is None:
            now = time.monotonic()
            if now >= grace:
                self.kill()
                grace = self.watchdog
            if now >= self.watchdog:
                self._lose()
                break
            self._pump(min(grace, self.watchdog) - now)
        self._finish()
        return self.reply

    def _finish(self) -> None:
        """After the reply every process of the run is gone: read what is left, close all."""
        until = time.monotonic() + 0.5
        while self.bufs and time.monotonic() < until:
            for key, _ in self.sel.select(max(0.0, until - time.monotonic())):
                if key.fd in self.bufs:
                    self._read(key.fd)
        for fd in list(self.bufs):
            self._close_fd(fd)
        self.sel.close()
        os.close(self.kill_w)
        if self.slot.sock is self.sock:
            self.sock.setblocking(True)

    def _lose(self) -> None:
        """The server hung or died: stop it (the slot starts a new one on its next run)."""
        if self.reply is None:
            self.sel.unregister(self.sock)
        self.reply = {"timed_out": True, "lost": True}
        self.slot.stop()

    def _close_fd(self, fd: int) -> None:
        self.sel.unregister(fd)
        os.close(fd)
        del self.bufs[fd]

    def _pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(max(0.0, timeout)):
            fd = key.fd
            if fd == self.sock.fileno():
                self._read_reply()
            elif fd == self.msg_w:
                self._write()
            elif fd in self.bufs:
                self._read(fd)

    def _write(self) -> None:
        assert self.msg_w is not None
        try:
            self.pending = self.pending[os.write(self.msg_w, self.pending[:65536]) :]
        except BlockingIOError:
            return
        except BrokenPipeError:  # the harness is gone; its end is reported by the server
            self.pending = b""
        if not self.pending:
            self.sel.unregister(self.msg_w)

    def _read(self, fd: int) -> bool:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:
            self._close_fd(fd)
            return False
        if fd == self.res_r:
            self._lines(chunk)
            return True
        buf = self.bufs[fd]
        buf += chunk
        if len(buf) > self.cap:
            del buf[self.cap :]
            self._overflow()
        return True

    def _overflow(self) -> None:
        if not self.over:
            self.over = True
            self.kill()

    def _lines(self, chunk: bytes) -> None:
        self.res_bytes += len(chunk)
        if self.res_bytes > RES_CAP:
            self.res.clear()
            self._overflow()
            return
        self.res += chunk
        if b"\n" not in chunk:
            return
        *lines, rest = bytes(self.res).split(b"\n")
        self.res[:] = rest
        for line in lines:
            obj = report_line(line, self.nonce)
            if obj is not None:
                self.events.append(obj)

    def _drain(self) -> None:
        for fd in [fd for fd in self.bufs if fd != self.res_r]:
            while fd in self.bufs and self._read(fd):
                pass

    def _read_reply(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        if not chunk:
            self._lose()
            raise SandboxError("the sandbox fork server died during a run")
        self.slot._buf += chunk
        if b"\n" in self.slot._buf:
            line, self.slot._buf = self.slot._buf.split(b"\n", 1)
            self.sel.unregister(self.sock)
            reply = json.loads(line)
            self.reply = reply
            _check_reply(reply)
            while self.res_r in self.bufs and self._read(self.res_r):  # its last reports
                pass

    def ended_status(self) -> Status:
        """How the run ended, once it has (the server's reply)."""
        reply = self.reply or {}
        sig = reply.get("signal")
        if reply.get("oom"):
            return "memory"
        if self.over:  # we killed it for that
            return "output_limit"
        if reply.get("timed_out") or sig == signal.SIGXCPU:
            return "timeout"
        return "error"

    def result(self, status: Status, report: dict[str, Any], wall_s: float) -> RunResult:
        """One test's result: its report's typed fields, and what it wrote."""
        out, err = self.take()
        reply = self.reply or {}
        return RunResult(
            status=status,
            stdout=out,
            stderr=err,
            exit_code=reply.get("exit"),
            signal=reply.get("signal"),
            wall_s=wall_s,
            result=report_fields(report),
            mode=self.slot.settings.mode,
        )


def talk(slot: _Slot, job: Job) -> LiveRun:
    """Start a run on `slot` to talk to (harness tests, serve or check)."""
    nonce = secrets.token_hex(16)
    in_w, out_r, err_r, res_r, msg_w, kill_w = slot._send(job, nonce)
    os.close(in_w)
    return LiveRun(slot, job, nonce, out_r, err_r, res_r, msg_w, kill_w)


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
    run = talk(slot, job)
    try:
        results = _run_tests(run, job, messages, judge)
    finally:
        reply = run.close()
    return with_memory_kills(results, reply)


def _run_tests(
    run: LiveRun, job: Job, messages: list[dict[str, Any]], judge: Judge
) -> list[RunResult]:
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
    slots = sorted(slots, key=lambda s: s.holds_secrets)  # the test process where one was
    sol = talk(slots[0], solution)
    chk: LiveRun | None = None
    results: list[RunResult] = []
    try:
        failed = _start(sol, n, solution.timeout_s)
        if failed is not None:
            results = failed
            return results
        chk = talk(slots[1], tests)
        failed = _start(chk, n, tests.timeout_s)
        if failed is not None:
            results = failed
            return results
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
        results += _skipped(chk, n - len(results))
        return results
    finally:
        replies = []
        for run in (chk, sol):
            if run is not None:
                if run.reply is None and run.over:
                    run.kill()
                replies.append(run.close())
        with_memory_kills(results, *replies)


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
            isinstance(name, str)
            and name in names
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
