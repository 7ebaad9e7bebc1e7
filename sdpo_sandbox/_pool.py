"""The pool: `Sandbox` owns `slots` slots (each claims a free uid by a lock file, so several
processes on one host never share one), runs jobs on them in parallel, and starts them on first
use; `get_sandbox` is the process-wide one (`configure_sandbox` sets its settings first).

Without namespaces (not root, or a container without CAP_SYS_ADMIN) it refuses to run
anything unless the operator sets SDPO_SANDBOX=unsafe-local: then runs get rlimits, a session
that is killed as a group, the seccomp filter, a scrubbed environment and a temporary
directory, but no namespaces and no minimal root. Verdicts say which mode ran them
("sandbox" in details) and it is logged.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sdpo_sandbox._protocol import Job, RunResult
from sdpo_sandbox._settings import Mode, SandboxError, SandboxSettings
from sdpo_sandbox._slot import _Slot

log = logging.getLogger(__name__)
T = TypeVar("T")


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
