"""The one sandbox for untrusted code (model-written solutions and users' verifiers).

Each of `slots` concurrent slots owns an unprivileged uid, a cgroup (_cgroup.py) and a warm
fork server (`_forkserver.py`, run by the sandbox python with an empty environment) that
lives in the slot's own namespaces and minimal read-only root. Per run the server forks one
process, which gets a private /tmp, rlimits, the slot uid with no_new_privs, and the seccomp
filter (_seccomp.py) before the code runs; afterwards the server kills whatever the run left
in the slot's PID namespace. Output is capped. Forking a warm server instead of spawning an
interpreter is most of the sandbox's speed (benchmarks/verifier_throughput.py compares it with
LiveCodeBench's own grader). docs/verifiers.md describes the whole world a run sees.

Without namespaces (not root, or a container without CAP_SYS_ADMIN) it refuses to run
anything unless the operator sets SDPO_SANDBOX=unsafe-local: then runs get rlimits, a session
that is killed as a group, the seccomp filter, a scrubbed environment and a temporary
directory, but no namespaces and no minimal root. Verdicts say which mode ran them
("sandbox" in details) and it is logged.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import math
import os
import re
import secrets
import select
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sdpo_sandbox._cgroup import CgroupUnavailable, SlotCgroup, slot_cgroup

log = logging.getLogger(__name__)
T = TypeVar("T")

CHILD = Path(__file__).with_name("_forkserver.py")
# The environment `make setup` builds for untrusted code (numpy, sortedcontainers, ...).
PROJECT_SANDBOX_PYTHON = Path(__file__).resolve().parents[1] / ".venv-sandbox/bin/python3"
Mode = Literal["namespaces", "unsafe-local"]
CgroupMode = Literal["auto", "required", "off"]
Status = Literal[
    "ok", "error", "timeout", "memory", "compile_error", "output_limit", "skipped", "crashed"
]


class SandboxError(RuntimeError):
    """The sandbox cannot run code (e.g. namespaces unavailable and no opt-in)."""


def _default_python() -> str:
    if PROJECT_SANDBOX_PYTHON.exists():
        return str(PROJECT_SANDBOX_PYTHON)
    return "/usr/bin/python3"


class SandboxSettings(BaseSettings):
    """Operator settings, one declaration per variable: `SDPO_SANDBOX_<FIELD>` (the mode is
    `SDPO_SANDBOX`), or a `.env` file in the working directory; docs/verifiers.md lists them.
    Arguments given in code win over the environment. The service's Settings nests these
    (`settings.sandbox`), and the worker configures its sandbox with them."""

    model_config = SettingsConfigDict(
        env_prefix="SDPO_SANDBOX_",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    mode: Mode = Field("namespaces", validation_alias=AliasChoices("mode", "SDPO_SANDBOX"))
    slots: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2), ge=1)
    uid_base: int = Field(61000, ge=1)  # slots take free uids from [uid_base, + uid_range)
    uid_range: int = Field(1000, ge=1)
    python: str = Field(default_factory=_default_python)  # its prefix is bound read-only
    max_output_bytes: int = Field(8 * 1024 * 1024, ge=1)  # per stream; more: Output Limit
    nproc: int = Field(64, ge=1)
    nofile: int = Field(256, ge=16)
    fsize_mb: int = Field(64, ge=1)
    tmpfs_mb: int = Field(64, ge=1)
    lock_dir: str = "/run/sdpo-sandbox"
    cgroup: CgroupMode = "auto"  # auto: use a cgroup per slot when possible, else warn
    cgroup_root: str | None = None  # cgroup v2 only: parent of the slots' cgroups
    # modules the fork server imports once (each fork pays for them); comma separated
    preload: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("preload", mode="before")
    @classmethod
    def _split_preload(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(m.strip() for m in value.split(",") if m.strip())
        return value

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field -> the environment variable that sets it."""
        prefix = cls.model_config["env_prefix"]
        return {
            name: "SDPO_SANDBOX" if name == "mode" else f"{prefix}{name.upper()}"
            for name in cls.model_fields
        }

    @classmethod
    def from_env(cls) -> SandboxSettings:
        """The environment's (and `.env`'s) settings; SandboxError names a bad variable."""
        try:
            return cls()
        except ValidationError as exc:
            names = cls.env_names()
            bad = "; ".join(
                f"{names.get(str(e['loc'][0]), e['loc'][0])}={e.get('input')!r}: {e['msg']}"
                for e in exc.errors()
            )
            raise SandboxError(bad) from None


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


SECRET_HARNESSES = ("check", "verify")  # their requests hold test code, a verifier's source
UNTRUSTED_HARNESSES = ("serve", "tests", "stdin")  # they run a response's code


class _Slot:
    """One uid + one fork server; used by one thread at a time."""

    def __init__(self, settings: SandboxSettings, uid: int | None, lock_fd: int | None) -> None:
        self.settings = settings
        self.uid = uid
        self.lock_fd = lock_fd
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self._buf = b""
        # The server parsed a request holding test code or a verifier's source: its freed
        # memory, which every run it forks inherits, may still hold them (see _send).
        self.holds_secrets = False
        self.cgroup: SlotCgroup | None = None
        if uid is None and settings.cgroup == "required":
            raise SandboxError("SDPO_SANDBOX_CGROUP=required: a cgroup per slot needs root")
        if uid is not None and settings.cgroup != "off":
            try:
                self.cgroup = slot_cgroup(uid, settings.nproc, settings.cgroup_root)
            except CgroupUnavailable as exc:
                if settings.cgroup == "required":
                    raise SandboxError(f"SDPO_SANDBOX_CGROUP=required: {exc}") from None
                log.warning(
                    "sandbox: no cgroup (%s); memory_mb limits each process's address space "
                    "instead of the whole run, and tmpfs is not counted",
                    exc,
                )

    def start(self) -> None:
        s = self.settings
        cfg = {
            "cgroup": self.cgroup.config() if self.cgroup else None,
            "preload": list(s.preload),
            "namespaces": s.mode == "namespaces",
            "uid": self.uid,
            "nproc": s.nproc,
            "nofile": s.nofile,
            "fsize_mb": s.fsize_mb,
            "tmpfs_mb": s.tmpfs_mb,
        }
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [s.python, "-I", str(CHILD), str(child.fileno())],
                pass_fds=[child.fileno()],
                env={"SDPO_SANDBOX_SLOT": json.dumps(cfg)},
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            parent.close()
            raise SandboxError(f"cannot start {s.python}: {exc}") from exc
        finally:
            child.close()
        self.sock = parent
        self._buf = b""
        hello = self._read_line(time.monotonic() + 30)
        if hello is None or "ready" not in hello:
            why = (hello or {}).get("error", "the fork server did not start")
            self.stop()
            raise SandboxError(f"sandbox unavailable ({s.mode}): {why}")

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            self.proc.kill()  # its supervisors and runs die with it (PR_SET_PDEATHSIG)
            self.proc.wait()
            self.proc = None

    def remove_cgroup(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None

    def _read_line(self, deadline: float) -> dict[str, Any] | None:
        assert self.sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _send(self, job: Job, nonce: str) -> tuple[int, int, int, int, int, int]:
        """Start `job`: our ends of its stdin, stdout, stderr, result channel, message channel
        and kill pipe."""
        if self.holds_secrets and job.harness in UNTRUSTED_HARNESSES:
            self.stop()  # a fresh server: a solution scanning its memory found the test code
        if self.proc is None or self.proc.poll() is not None:
            self.start()
            self.holds_secrets = False
        if job.harness in SECRET_HARNESSES:
            self.holds_secrets = True
        assert self.sock is not None
        # The server gets only the limits; the run's code and data go to the run itself, as
        # the first line on its message channel: a server that parsed them kept them in its
        # freed memory, which every later run it forked could read (another attempt's code).
        payload = json.dumps(
            {"timeout_s": job.timeout_s, "budget_s": job.budget_s, "memory_mb": job.memory_mb}
        ).encode()
        body = json.dumps(
            {
                "nonce": nonce,
                "harness": job.harness,
                "code": job.code,
                "fn_name": job.fn_name,
                "mode": job.mode,
                "tests": list(job.tests),
                "names": list(job.names),
                "entry_point": job.entry_point,
                "prefix": job.prefix,
                "data": job.data,
            }
        ).encode()
        pipes = [os.pipe() for _ in range(6)]  # stdin, stdout, stderr, result, messages, kill
        theirs = [r if i in (0, 4, 5) else w for i, (r, w) in enumerate(pipes)]
        ours = [w if i in (0, 4, 5) else r for i, (r, w) in enumerate(pipes)]
        try:
            head = struct.pack(">Q", len(payload))
            socket.send_fds(self.sock, [head], theirs)
            self.sock.sendall(payload)
        except OSError as exc:
            for fd in theirs + ours:
                os.close(fd)
            self.stop()
            raise SandboxError(f"sandbox slot lost: {exc}") from exc
        for fd in theirs:
            os.close(fd)
        try:
            self._write_body(ours[4], body + b"\n")
        except SandboxError:
            for fd in ours:
                os.close(fd)
            self.stop()
            raise
        return ours[0], ours[1], ours[2], ours[3], ours[4], ours[5]

    @staticmethod
    def _write_body(fd: int, body: bytes) -> None:
        """`body` into the run's message channel; the run reads it first thing. A server that
        refused the run closed the other end (its reply says why)."""
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(max(len(body), 65536), 1 << 20))
        except OSError:
            pass
        os.set_blocking(fd, False)
        view = memoryview(body)
        deadline = time.monotonic() + 30.0
        try:
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SandboxError("sandbox slot lost: the run did not take its request")
                select.select([], [fd], [], left)
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    continue
        except BrokenPipeError:
            pass
        finally:
            os.set_blocking(fd, True)

    def run(self, job: Job) -> RunResult:
        nonce = secrets.token_hex(16)
        in_w, out_r, err_r, res_r, msg_w, kill_w = self._send(job, nonce)
        os.close(msg_w)
        try:
            return self._collect(job, nonce, in_w, out_r, err_r, res_r)
        finally:
            os.close(kill_w)  # after the reply: its end would kill the run

    def _collect(
        self, job: Job, nonce: str, in_w: int, out_r: int, err_r: int, res_r: int
    ) -> RunResult:
        cap = self.settings.max_output_bytes
        data = job.stdin.encode("utf-8", "surrogateescape")
        bufs: dict[int, bytearray] = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
        caps = {out_r: cap, err_r: cap, res_r: max(cap, 16 * 1024 * 1024)}
        over = False
        sel = selectors.DefaultSelector()
        for fd in bufs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        if data:
            os.set_blocking(in_w, False)
            sel.register(in_w, selectors.EVENT_WRITE)
        else:
            os.close(in_w)
        assert self.sock is not None
        sel.register(self.sock, selectors.EVENT_READ)
        self.sock.setblocking(False)
        open_fds = set(bufs) | ({in_w} if data else set())
        reply: dict[str, Any] | None = None
        watchdog = time.monotonic() + job.timeout_s + 10.0
        drain_until: float | None = None
        try:
            while True:
                now = time.monotonic()
                if reply is not None and (not (open_fds - {in_w}) or now >= (drain_until or now)):
                    break
                if now >= watchdog:
                    break
                limit = watchdog if drain_until is None else min(watchdog, drain_until)
                for key, _ in sel.select(timeout=max(0.0, limit - now)):
                    fd = key.fd
                    if fd == self.sock.fileno():
                        try:
                            chunk = self.sock.recv(65536)
                        except BlockingIOError:
                            continue
                        if not chunk:
                            sel.unregister(self.sock)
                            watchdog = 0.0
                            continue
                        self._buf += chunk
                        if b"\n" in self._buf:
                            line, self._buf = self._buf.split(b"\n", 1)
                            reply = json.loads(line)
                            sel.unregister(self.sock)
                            drain_until = time.monotonic() + 0.5
                    elif fd == in_w:
                        try:
                            data = data[os.write(in_w, data[:65536]) :]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:  # the program stopped reading its input
                            data = b""
                        if not data:
                            sel.unregister(in_w)
                            os.close(in_w)
                            open_fds.discard(in_w)
                    else:
                        try:
                            chunk = os.read(fd, 65536)
                        except BlockingIOError:
                            continue
                        buf = bufs[fd]
                        if chunk and len(buf) + len(chunk) <= caps[fd]:
                            buf += chunk
                            continue
                        if chunk:  # over the cap: keep what fits, stop reading (EPIPE ends it)
                            buf += chunk[: caps[fd] - len(buf)]
                            over = True
                        sel.unregister(fd)
                        os.close(fd)
                        open_fds.discard(fd)
        finally:
            sel.close()
            for fd in open_fds:
                os.close(fd)
            if self.sock is not None:
                self.sock.setblocking(True)
        if reply is None:  # the server hung or died: rebuild the slot, report a crash/timeout
            self.stop()
            return RunResult(
                status="timeout" if time.monotonic() >= watchdog else "crashed",
                stdout=bufs[out_r].decode("utf-8", "replace"),
                stderr=bufs[err_r].decode("utf-8", "replace"),
                mode=self.settings.mode,
            )
        _check_reply(reply)
        return _classify(job, nonce, reply, bufs[out_r], bufs[err_r], bufs[res_r], over, self)


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
    slot: _Slot,
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
        mode=slot.settings.mode,
    )


class Sandbox:
    """A pool of slots. `run` one job, or `run_many` in parallel across the slots."""

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.settings = settings or SandboxSettings.from_env()
        if self.settings.slots < 1:
            raise SandboxError("slots must be >= 1")
        self._free: list[_Slot] = []
        self._freed = threading.Condition()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._started = False
        self._pool = ThreadPoolExecutor(self.settings.slots, thread_name_prefix="sandbox")
        if self.settings.mode == "unsafe-local":
            log.warning(
                "SDPO_SANDBOX=unsafe-local: untrusted code runs WITHOUT namespaces "
                "(network, other processes and the file system are reachable)"
            )

    @property
    def mode(self) -> Mode:
        return self.settings.mode

    @property
    def uids(self) -> list[int]:
        return [s.uid for s in self._slots if s.uid is not None]

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            s = self.settings
            root = os.geteuid() == 0
            if s.mode == "namespaces" and not root:
                raise SandboxError(
                    "sandbox unavailable: namespaces and per-slot uids need root; refusing to "
                    "run untrusted code (set SDPO_SANDBOX=unsafe-local to accept weaker isolation)"
                )
            try:
                self._add_slots(s.slots)
            except SandboxError as exc:
                self._close_slots()
                if s.mode == "namespaces":
                    raise SandboxError(
                        f"{exc}; refusing to run untrusted code "
                        "(set SDPO_SANDBOX=unsafe-local to accept weaker isolation)"
                    ) from None
                raise
            self._started = True

    def _add_slots(self, n: int) -> None:
        """Start `n` more slots (under self._lock). On SandboxError the ones started are in
        use (or for `_start` to close); the one that failed and the uids of the rest are
        released, so a later call tries again."""
        s = self.settings
        claimed = self._claim_uids(n) if os.geteuid() == 0 else [(None, None)] * n
        try:
            for uid, lock_fd in claimed:
                slot = _Slot(s, uid, lock_fd)
                try:
                    slot.start()
                except SandboxError:
                    slot.remove_cgroup()
                    raise
                self._slots.append(slot)
                with self._freed:
                    self._free.append(slot)
                    self._freed.notify_all()
        except SandboxError:
            held = {slot.lock_fd for slot in self._slots}
            for _, lock_fd in claimed:  # the uids no slot got as far as holding
                if lock_fd is not None and lock_fd not in held:
                    os.close(lock_fd)
            raise

    def _claim_uids(self, n: int) -> list[tuple[int, int]]:
        """Take `n` uids nobody else holds, by flock on one file per uid (across processes)."""
        lock_dir = Path(self.settings.lock_dir)
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        got: list[tuple[int, int]] = []
        base = self.settings.uid_base
        for uid in range(base, base + self.settings.uid_range):
            fd = os.open(lock_dir / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            got.append((uid, fd))
            if len(got) == n:
                return got
        for _, fd in got:
            os.close(fd)
        raise SandboxError(f"no {n} free sandbox uids in [{base}, {base + 1000})")

    def _close_slots(self) -> None:
        for slot in self._slots:
            slot.stop()
            slot.remove_cgroup()
            if slot.lock_fd is not None:
                os.close(slot.lock_fd)
        self._slots.clear()
        with self._freed:
            self._free.clear()

    def with_slots(self, n: int, fn: Callable[[list[_Slot]], T]) -> T:
        """`fn` on `n` slots of its own, taken together (so two callers that each need two
        never hold one each and wait forever). More than SDPO_SANDBOX_SLOTS (assert tests
        take 2 with SDPO_SANDBOX_SLOTS=1) start on first use: their runs take turns, and no
        more callers than SDPO_SANDBOX_SLOTS run at once through `map` and `run_many`."""
        self._start()
        with self._lock:
            if n > len(self._slots):
                self._add_slots(n - len(self._slots))
        with self._freed:
            self._freed.wait_for(lambda: len(self._free) >= n)
            slots = [self._free.pop() for _ in range(n)]
        try:
            return fn(slots)
        finally:
            with self._freed:
                self._free.extend(slots)
                self._freed.notify_all()

    def map(self, fn: Callable[[list[_Slot], Any], T], items: Sequence[Any], n: int = 1) -> list[T]:
        """`fn(slots, item)` for each item, in parallel over the slots (`n` each), in order."""
        self._start()
        return list(self._pool.map(lambda item: self.with_slots(n, lambda sl: fn(sl, item)), items))

    def run(self, job: Job) -> RunResult:
        result = self.with_slots(1, lambda slots: slots[0].run(job))
        if result.status == "crashed":
            raise SandboxError("the sandbox fork server died during a run")
        return result

    def run_many(
        self, jobs: Sequence[Job], stop: Callable[[RunResult], bool] | None = None
    ) -> list[RunResult]:
        """Run `jobs` in parallel over the slots, results in order.

        Once a result of some group satisfies `stop`, that group's jobs not yet started are
        skipped (status "skipped"), e.g. stop after one Time Limit Exceeded.
        """
        self._start()
        stopped: set[int] = set()

        def one(job: Job) -> RunResult:
            if job.group in stopped:
                return RunResult(status="skipped", mode=self.mode)
            result = self.run(job)
            if stop is not None and stop(result):
                stopped.add(job.group)
            return result

        return list(self._pool.map(one, jobs))

    def close(self) -> None:
        with self._lock:
            self._close_slots()
            self._started = False

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: Sandbox | None = None
_shared_lock = threading.Lock()


_configured: SandboxSettings | None = None


def configure_sandbox(settings: SandboxSettings) -> None:
    """The settings of the process-wide sandbox, before its first use (the worker passes
    its Settings.sandbox); without this, it reads the environment."""
    global _configured
    with _shared_lock:
        if _shared is not None and _shared.settings != settings:
            log.warning("sandbox already running; new settings apply to the next process")
        _configured = settings


def get_sandbox() -> Sandbox:
    """The process-wide sandbox, configured on first use (configure_sandbox or the env)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Sandbox(_configured or SandboxSettings.from_env())
            atexit.register(_shared.close)
        return _shared


__all__ = [
    "Job",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "SandboxSettings",
    "configure_sandbox",
    "get_sandbox",
]
