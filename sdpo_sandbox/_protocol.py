"""The run protocol, parent side: what a run is given (`Job`), what comes back (`RunResult`,
`Status`), and how a run's two channels are read. The server's reply is trusted (the run never
holds its socket); the harness's reports are not (the code under test writes the same channel):
only lines carrying the run's nonce count, each is shape-checked in linear time before it is
decoded, only typed fields are kept, and they are data, never a verdict by themselves."""

from __future__ import annotations

import json
import math
import re
import signal
from dataclasses import dataclass, field
from typing import Any, Literal

from sdpo_sandbox._settings import Mode, SandboxError

Status = Literal[
    "ok", "error", "timeout", "memory", "compile_error", "output_limit", "skipped", "crashed"
]


@dataclass(frozen=True)
class Job:
    """One run. `harness`: stdin (a program on `stdin`), verify (verify(data)), or one that
    the parent talks to while it runs (`_interactive.talk`): tests (all tests of an attempt, `mode`
    stdin or call), serve and check (the solution's and the test code's processes of assert
    tests; `tests` the test codes, `names` the solution's names the tests call).

    `timeout_s` bounds a run; `budget_s`, when given, bounds a talked-to run instead (its
    parent enforces each test's `timeout_s`). `group` ties runs of one attempt together for
    `Sandbox.run_many`'s early stop.
    """

    code: str
    harness: Literal["stdin", "verify", "tests", "serve", "check"] = "stdin"
    stdin: str = ""
    timeout_s: float = 6.0
    memory_mb: int = 512
    fn_name: str | None = None
    mode: Literal["stdin", "call"] | None = None
    tests: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    entry_point: str | None = None
    prefix: str | None = None  # code run before the solution, e.g. HumanEval's prompt
    data: str | None = None  # the argument of verify() (verify)
    budget_s: float | None = None
    group: int = 0


@dataclass
class RunResult:
    status: Status
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: int | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)  # what the harness reported
    mode: Mode = "namespaces"
    # processes of the run the kernel killed at its memory limit (the run may have gone on:
    # a forked child killed, the parent still answering), and whether a memory cgroup held
    # the run at all (None: not known, e.g. a run that never started)
    oom_kills: int = 0
    memory_cgroup: bool | None = None


def with_memory_kills(results: list[RunResult], *replies: dict[str, Any] | None) -> list[RunResult]:
    """`results` of runs that ended with the server's `replies`, marked with their memory
    kills (an interactive run's tests are judged while it runs; its count comes at the end)."""
    kills = sum(int(r.get("oom_kills") or 0) for r in replies if r)
    known = [bool(r["cgroup"]) for r in replies if r and "cgroup" in r]
    for result in results:
        result.oom_kills = kills
        result.memory_cgroup = any(known) if known else None
    return results


# What the harness may report, and the type of each field. Anything else is ignored.
REPORT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "compile_error": str,
    "exception": str,
    "exit_called": int,
    "repr": str,
    "ok": bool,
    "done": bool,
    "value": (bool, str, list),
}


def _check_reply(reply: dict[str, Any]) -> None:
    """The server's own word that a run could not be set up (never the run's: its code
    never holds the pipe that says so)."""
    if "error" in reply:
        raise SandboxError(f"sandbox run failed: {reply['error']}")
    if reply.get("setup_error"):
        raise SandboxError(f"sandbox setup failed: {reply['setup_error']}")


def report_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The fields of a report that have their type in REPORT_FIELDS; nothing else."""
    out: dict[str, Any] = {}
    for key, typ in REPORT_FIELDS.items():
        value = obj.get(key)
        if isinstance(value, typ) and not (key == "exit_called" and isinstance(value, bool)):
            out[key] = value
    return out


_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
MAX_REPORT_STRINGS = 32  # a report has a dozen (keys and values)
MAX_REPORT_CONTAINERS = 4  # outside strings: the object, a list in it (reply, value)


def report_line(line: bytes, nonce: str) -> dict[str, Any] | None:
    """`line` decoded when it is shaped like a harness report carrying `nonce`, else None.

    Only a flat object (at most a short list in it) is decoded: the channel is the untrusted
    code's, and 15 MB of `[{},{},...]` decode to ~350 MB of objects. The shape is checked
    in linear time, string by string, before anything is decoded."""
    key = nonce.encode()
    if key not in line:
        return None
    pos = containers = 0
    for _ in range(MAX_REPORT_STRINGS + 1):
        quote = line.find(b'"', pos)
        end = len(line) if quote < 0 else quote
        containers += line.count(b"[", pos, end) + line.count(b"{", pos, end)
        if containers > MAX_REPORT_CONTAINERS:
            return None
        if quote < 0:
            break
        string = _JSON_STRING.match(line, quote)
        if string is None:  # unterminated: not JSON
            return None
        pos = string.end()
    else:
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) and obj.get("nonce") == nonce else None


def _reported(res: bytes, nonce: str) -> dict[str, Any]:
    """The result channel's authenticated lines, fields type-checked; the first value wins.

    The channel is written by untrusted code, so it is only data: lines without the run's
    nonce are ignored, and no verdict rests on it alone (the parent compares values itself).
    """
    reported: dict[str, Any] = {}
    for line in res.split(b"\n", 64)[:64]:  # the harness writes a handful of lines
        obj = report_line(line, nonce)
        if obj is None:
            continue
        if "value" in obj:
            reported["done"] = True  # the harness got to its end
        for key, value in report_fields(obj).items():
            reported.setdefault(key, value)
    return reported


def _classify(
    job: Job,
    nonce: str,
    reply: dict[str, Any],
    out: bytes,
    err: bytes,
    res: bytes,
    over: bool,
    mode: Mode,
) -> RunResult:
    reported = _reported(res, nonce)
    sig = reply.get("signal")
    exit_code = reply.get("exit")
    cpu_limit = math.ceil(job.timeout_s) + 1  # RLIMIT_CPU: SIGXCPU, then SIGKILL a second on
    out_of_cpu = sig == signal.SIGXCPU or (
        sig == signal.SIGKILL and float(reply.get("cpu_s", 0)) >= cpu_limit
    )
    if reply.get("oom"):  # the kernel killed a process of the run at the cgroup's limit
        status: Status = "memory"
    elif reply.get("timed_out") or out_of_cpu:
        status = "timeout"
    elif over:
        status = "output_limit"
    elif "compile_error" in reported:
        status = "compile_error"
    elif reported.get("exception") == "MemoryError":
        status = "memory"
    elif exit_code == 0 and (job.harness == "stdin" or reported.get("done")):
        status = "ok"
    else:
        status = "error"
    return RunResult(
        status=status,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        exit_code=exit_code,
        signal=sig,
        wall_s=float(reply.get("wall_s", 0.0)),
        cpu_s=float(reply.get("cpu_s", 0.0)),
        result=reported,
        mode=mode,
        oom_kills=int(reply.get("oom_kills") or 0),
        memory_cgroup=reply.get("cgroup"),
    )
