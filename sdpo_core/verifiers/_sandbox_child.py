"""Fork server of one sandbox slot. Runs as its own `/usr/bin/python3 -I` process, stdlib only.

It never imports sdpo_core: it starts with an empty environment and holds nothing secret, so
a forked copy of it is a clean place to run untrusted code. Pre-importing the usual modules
here (and forking per run) saves the ~15 ms interpreter start-up of a fresh process.

Per run it forks a supervisor A, which unshares fresh network, IPC, UTS, mount and PID
namespaces and forks B, the run itself: B is PID 1 of the new PID namespace (so when B dies,
the kernel kills everything it started), mounts private tmpfs over every world-writable
directory, drops to the slot's uid with rlimits and no_new_privs, and executes the code. A
enforces the wall-clock limit and reports back.

Protocol on the socket whose fd is argv[1] (argv[2] is the JSON config):
  start:   server -> parent: one JSON line, {"ready": true} or {"error": "..."}
  request: parent -> server: 8-byte big-endian length, sent with 4 fds (stdin read end,
           stdout/stderr/result write ends), then the JSON payload
  reply:   A -> parent: one JSON line {"exit": .., "signal": .., "timed_out": .., ...}
"""

import bisect
import collections
import copy
import ctypes
import datetime
import decimal
import fractions
import functools
import heapq
import io
import itertools
import json
import linecache
import math
import operator
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import string
import struct
import sys
import tempfile
import time
import traceback
import types
import typing

_PRELOADED = (bisect, collections, copy, datetime, decimal, fractions, functools, heapq)
_PRELOADED2 = (itertools, math, operator, random, re, statistics, string, typing)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
NS_FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONIOENCODING": "utf-8",
}

# LiveCodeBench's import header for stdin and call-based programs (names only; the modules
# are already loaded here, so this costs well under a millisecond).
PRELUDE = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\n"
    "from random import *\nfrom statistics import *\nfrom itertools import *\n"
    "from functools import *\nfrom operator import *\nfrom io import *\nfrom sys import *\n"
    "from json import *\nfrom builtins import *\nfrom typing import *\n"
    "import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics\n"
    "import itertools, functools, operator, io, sys, json\nsys.setrecursionlimit(50000)\n"
)

libc = ctypes.CDLL(None, use_errno=True)


def _libc(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, value: int) -> None:
    _libc(libc.prctl(option, value, 0, 0, 0), "prctl")


def _mount(src: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _libc(
        libc.mount(
            src.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _recv_exact(sock: socket.socket, n: int, first: bytes = b"") -> bytes:
    buf = bytearray(first)
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


# ------------------------------------------------------------------- B: the run itself


def _setup_root(cfg: dict, workdir: str | None) -> str:
    """As root in the new namespaces (B, the PID-namespace init): mounts and the private dir."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if cfg["namespaces"]:
        _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
        tmpfs = f"size={int(cfg['tmpfs_mb'])}m,mode=1777"
        for d in PRIVATE_DIRS:
            if os.path.isdir(d):
                _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        socket.sethostname("sandbox")
        workdir = "/tmp/work"
        os.mkdir(workdir, 0o700)
    assert workdir is not None
    if cfg["uid"] is not None:
        os.chown(workdir, cfg["uid"], cfg["uid"])
    return workdir


def _drop(req: dict, cfg: dict, fds: list[int], workdir: str) -> None:
    """Become the sandboxed process (C): session, rlimits, uid, no_new_privs, fds, env."""
    uid = cfg["uid"]
    os.chdir(workdir)
    os.setsid()
    cpu = math.ceil(float(req["timeout_s"])) + 1
    mem = int(req["memory_mb"]) * 1024 * 1024
    limits = {
        resource.RLIMIT_AS: mem,
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_FSIZE: int(cfg["fsize_mb"]) * 1024 * 1024,
        resource.RLIMIT_NOFILE: int(cfg["nofile"]),
        resource.RLIMIT_CORE: 0,
    }
    if uid is not None:  # NPROC counts per real uid: only meaningful on the slot's own uid
        limits[resource.RLIMIT_NPROC] = int(cfg["nproc"])
    for which, value in limits.items():
        soft, hard = value if isinstance(value, tuple) else (value, value)
        resource.setrlimit(which, (soft, hard))
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a uid change clears it
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(len(fds), 1 << 16)
    os.environ.clear()
    os.environ.update(SANDBOX_ENV, HOME=workdir, TMPDIR=workdir, PWD=workdir)


def _report(obj: dict) -> None:
    try:
        _write_all(3, (json.dumps(obj) + "\n").encode())
    except OSError:
        pass


def _print_exc(exc: BaseException) -> None:
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # drop the harness frame
    try:
        sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb)))
        sys.stderr.flush()
    except Exception:
        pass


def _source(name: str, text: str) -> types.CodeType:
    """Compile `text` as file `name`, registering it so tracebacks show its lines."""
    lines = text.splitlines(keepends=True)
    linecache.cache[name] = (len(text), None, lines, name)
    return compile(text, name, "exec", dont_inherit=True)


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _run_user(req: dict) -> None:
    """Run the untrusted code under the harness `req["harness"]` and exit."""
    nonce = req.pop("nonce")
    harness = req["harness"]
    sys.stdin = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(
        2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    sys.argv = ["solution.py"]
    sys.path.insert(0, os.getcwd())
    module = types.ModuleType("__main__")
    module.__file__ = "solution.py"
    sys.modules["__main__"] = module
    g = module.__dict__
    code = 0
    try:
        if req.get("prefix"):
            exec(_source("prompt.py", req["prefix"]), g)
        compiled = _source("solution.py", req["code"])
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc))
        _report({"compile_error": text})
        sys.stderr.write(text)
        sys.stderr.flush()
        os._exit(1)
    try:
        if harness in ("stdin", "call"):
            exec(PRELUDE, g)
        exec(compiled, g)
        if harness == "call":
            name = req["fn_name"]
            cls = g.get("Solution")
            fn = getattr(cls(), name) if isinstance(cls, type) else g.get(name)
            if fn is None:
                raise NameError(f"name {name!r} is not defined")
            result = _jsonable(fn(*json.loads(req["args"])))
            try:
                _report({"nonce": nonce, "result": json.dumps(result)})
            except (TypeError, ValueError):
                _report({"nonce": nonce, "result": None, "repr": repr(result)[:10000]})
        elif harness == "assert":
            exec(_source("test.py", req["test"]), g)
            entry = req.get("entry_point")
            if entry and callable(g.get("check")):
                g["check"](g[entry])
            _report({"nonce": nonce, "ok": True})
        elif harness == "verify":
            value = g["verify"](req["data"])
            if isinstance(value, tuple | list) and len(value) == 2:
                passed, feedback = value
                value = [passed, feedback if isinstance(feedback, str) else repr(feedback)]
            elif not isinstance(value, bool):
                value = repr(value)[:1000]
            _report({"nonce": nonce, "value": value})
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            sys.stderr.write(f"{exc.code}\n")
            code = 1
        if harness != "stdin":
            _report({"exit_called": code})
    except BaseException as exc:
        _report({"exception": type(exc).__name__})
        _print_exc(exc)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


# ------------------------------------------------------------------ A: one run's supervisor


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (kill(-1) as that uid reaches exactly those)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _kill_children() -> None:
    """Kill and reap every child (orphans of the run land here as we are a subreaper)."""
    me = os.getpid()
    while True:
        try:
            with open(f"/proc/{me}/task/{me}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            children = []
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _supervise(sock: socket.socket, req: dict, cfg: dict, fds: list[int]) -> dict:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    workdir = None
    if cfg["namespaces"]:
        _libc(libc.unshare(NS_FLAGS), "unshare")
    else:  # orphans of the run become our children, so we can kill and reap them
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        workdir = tempfile.mkdtemp(prefix="sdpo-sandbox-")
    status_r, status_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # B: init of the new PID namespace. It runs the code in a child C, since
        # an init ignores the signals a program sends itself (os.kill(os.getpid(), 9)).
        os.close(status_r)
        try:
            workdir = _setup_root(cfg, workdir)
            code_pid = os.fork()
            if code_pid == 0:
                _drop(req, cfg, fds, workdir)
                _run_user(req)
        except BaseException as exc:
            try:
                _write_all(fds[3], (json.dumps({"setup_error": repr(exc)}) + "\n").encode())
            finally:
                os._exit(111)
        for fd in fds:
            os.close(fd)
        while True:  # reap orphans until the program itself exits
            done, status = os.wait()
            if done == code_pid:
                os.write(status_w, str(status).encode())
                os._exit(0)
    os.close(status_w)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd], [], [], float(req["timeout_s"]))
    timed_out = not ready
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    code_status = os.read(status_r, 64)
    os.close(status_r)
    if code_status:
        status = int(code_status)
    if not cfg["namespaces"]:  # no PID namespace to take the stragglers down with it
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if cfg["uid"] is not None:
            _kill_uid(cfg["uid"])
        _kill_children()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "timed_out": timed_out,
        "wall_s": round(wall, 6),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 6),
        "maxrss_kb": usage.ru_maxrss,
    }


def _probe(cfg: dict) -> str | None:
    """Check, in a throwaway child, that this server can do what every run needs."""
    if cfg["uid"] is not None and os.geteuid() != 0:
        return "switching to the slot uid needs root"
    if not cfg["namespaces"]:
        return None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _libc(libc.unshare(NS_FLAGS), "unshare")
            _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
            msg = b""
        except BaseException as exc:
            msg = str(exc).encode() or b"failed"
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    msg = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    return msg.decode() or None


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    cfg = json.loads(sys.argv[2])
    error = _probe(cfg)
    sock.sendall((json.dumps({"error": error} if error else {"ready": True}) + "\n").encode())
    if error:
        return
    while True:
        try:
            head, fds, _, _ = socket.recv_fds(sock, 8, 4)
        except OSError:
            return
        if not head:
            return  # the parent went away
        try:
            (size,) = struct.unpack(">Q", _recv_exact(sock, 8, head))
            req = json.loads(_recv_exact(sock, size))
        except (EOFError, ValueError):
            return
        pid = os.fork()
        if pid == 0:
            try:
                reply = _supervise(sock, req, cfg, fds)
            except BaseException as exc:
                reply = {"error": repr(exc)}
            try:
                sock.sendall((json.dumps(reply) + "\n").encode())
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    _ = (io, _PRELOADED, _PRELOADED2)
    main()
