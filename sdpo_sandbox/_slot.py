"""One sandbox slot, parent side: an unprivileged uid, its cgroup and its fork server
(_forkserver.py, started by path with the sandbox python and an empty environment). It sends a
run's request (the limits to the server; the code and data to the run itself, on its message
channel) and collects a one-shot run's output within its caps; runs the parent talks to while
they run are _interactive.py's."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import select
import selectors
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from sdpo_sandbox._cgroup import CgroupUnavailable, SlotCgroup, slot_cgroup
from sdpo_sandbox._protocol import Job, RunResult, _check_reply, _classify
from sdpo_sandbox._settings import SandboxError, SandboxSettings

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("_forkserver.py")

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
        return _classify(
            job, nonce, reply, bufs[out_r], bufs[err_r], bufs[res_r], over, self.settings.mode
        )
