"""Fork server (zygote) of one sandbox slot, stdlib only. Runs as `<sandbox python> -I`.

It loads nothing but the stdlib and its sibling _seccomp.py (never the package, which the
sandbox python need not have): it starts with an empty environment and holds nothing secret, so
a forked copy of it is a clean place to run untrusted code. Pre-importing the usual modules
here (and forking per run) saves the interpreter start-up of a fresh process per test.

At start (namespaces mode) the server moves into its own mount, network, UTS, IPC and PID
namespaces, going on as PID 1 of the latter, and pivots into a minimal root: a read-only
tmpfs holding /usr and the interpreter's own prefix (bound read-only), a synthetic /etc, a few
/dev nodes, the slot's /proc, and nothing else (no project files, no data directories, no
/run). It serves runs one at a time, itself acting as their supervisor, from inside the
slot's cgroup (memory and process limits for everything a run starts, tmpfs included; a run is
the OOM killer's first choice). Per run it forks the run's process, which unshares a fresh
mount namespace, mounts a private tmpfs on /tmp (/dev/shm and /var/tmp point into it), drops
to the slot uid with rlimits and no_new_privs, installs the seccomp filter (_seccomp.py) and
executes the code. The server enforces the run's wall-clock budget (the parent each test's
limit, through the kill pipe); when the run's process has ended
it kills every other process of its PID namespace (the run's stragglers: everything but
itself) and reaps them, so no process of a run outlives it.

Protocol on the socket whose fd is argv[1] (the JSON config is $SDPO_SANDBOX_SLOT):
  start:   server -> parent: one JSON line, {"ready": true} or {"error": "..."}
  request: parent -> server: 8-byte big-endian length, sent with 6 fds (stdin read end,
           stdout/stderr/result write ends, message read end, kill pipe read end), then the
           JSON payload: the run's limits only. The run gets the first five as fds 0-4; a
           byte on the kill pipe (or its end) kills the run. The run's code and data (the
           harness, nonce, code, tests, ...) are the first line on its message channel, read
           by the run itself: the server never holds them, so no run finds another's in the
           memory it inherits from the server.
  reply:   server -> parent: one JSON line {"exit": .., "signal": .., "timed_out": .., ...}
"""

import ast
import bisect
import builtins
import collections
import copy
import ctypes
import datetime
import decimal
import fcntl
import fractions
import functools
import gc
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
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
KEYCTL_JOIN_SESSION_KEYRING = 1
# Once per slot (the seccomp filter keeps runs from leaving System V IPC objects behind).
SLOT_NS = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC
RUN_NS = CLONE_NEWNS  # per run, besides the PID namespace
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
DEVICES = ("null", "zero", "full", "random", "urandom")
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


# ---------------------------------------------------------------------------- the run itself


def _setup_root(cfg: dict, workdir: str | None) -> str:
    """As root, in the run's process: its own mount namespace and private /tmp."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if cfg["namespaces"]:
        _libc(libc.unshare(RUN_NS), "unshare")
        tmpfs = f"size={int(cfg['tmpfs_mb'])}m,mode=1777"
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
        for alias, path in WORLD.tmp_roots:
            _bind(alias, path, MS_RDONLY | MS_NOSUID | MS_NODEV)
        for path, real in WORLD.tmp_links:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(real, path)
        os.mkdir("/tmp/shm", 0o1777)  # /dev/shm (one tmpfs, one size limit, one mount less)
        os.chmod("/tmp/shm", 0o1777)  # (mkdir applies the umask)
        workdir = "/tmp/work"
        os.mkdir(workdir, 0o700)
    if WORLD.cgroup_procs:  # at the cgroup's limit the run goes first, never the server
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    assert workdir is not None
    if cfg["uid"] is not None:
        os.chown(workdir, cfg["uid"], cfg["uid"])
    return workdir


def _drop(req: dict, cfg: dict, fds: list[int], workdir: str) -> None:
    """Become the sandboxed process: session, rlimits, uid, no_new_privs, fds, env, and last
    the seccomp filter."""
    uid = cfg["uid"]
    os.chdir(workdir)
    os.setsid()
    cpu = math.ceil(float(req.get("budget_s") or req["timeout_s"])) + 1
    limits = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_FSIZE: int(cfg["fsize_mb"]) * 1024 * 1024,
        resource.RLIMIT_NOFILE: int(cfg["nofile"]),
        resource.RLIMIT_CORE: 0,
    }
    # Each process: memory_mb of address space above the server's own (a single-process
    # bomb gets a MemoryError at once; at a cgroup's limit the kernel may first thrash page
    # cache for a while). The cgroup, where there is one, bounds all processes together.
    limits[resource.RLIMIT_AS] = int(req["memory_mb"]) * 1024 * 1024 + WORLD.base_vm
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
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]  # none is overwritten below
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(len(fds), 1 << 16)
    WORLD.setup_fd = SETUP_FD  # the last of `fds`: the setup pipe, open until the code runs
    os.environ.clear()
    os.environ.update(SANDBOX_ENV, HOME=workdir, TMPDIR=workdir, PWD=workdir)
    if WORLD.seccomp is not None:
        WORLD.install_seccomp(WORLD.seccomp)
    os.close(SETUP_FD)  # set up: from here on the code runs, and cannot say it was setup


def _report(obj: dict, nonce: str) -> None:
    """One line on the result channel; the parent ignores every line without the nonce."""
    try:
        _write_all(3, (json.dumps({**obj, "nonce": nonce}) + "\n").encode())
    except (OSError, ValueError, TypeError):
        pass


def _print_exc(exc: BaseException) -> None:
    """The traceback without the harness's frames (in the program's, the test's and chained
    exceptions): they are noise to the program, and named the host path of this file."""
    try:
        shown = traceback.TracebackException(type(exc), exc, exc.__traceback__)
        todo, seen = [shown], set()
        while todo:
            te = todo.pop()
            if id(te) in seen:
                continue
            seen.add(id(te))
            ours = _print_exc.__code__.co_filename
            te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != ours])
            todo += [t for t in (te.__cause__, te.__context__) if t is not None]
            todo += getattr(te, "exceptions", None) or []  # an ExceptionGroup's
        sys.stderr.write("".join(shown.format()))
        sys.stderr.flush()
    except Exception:
        pass


def _source(name: str, text: str) -> types.CodeType:
    """Compile `text` as file `name`, registering it so tracebacks show its lines."""
    lines = text.splitlines(keepends=True)
    linecache.cache[name] = (len(text), None, lines, name)
    return compile(text, name, "exec", dont_inherit=True)


def _plain(value: object, depth: int = 0) -> object:
    """numpy scalars and arrays as Python values (so their repr is a literal); else as is."""
    if depth < 50 and type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    if depth < 50 and type(value) in (list, tuple):
        return type(value)(_plain(v, depth + 1) for v in value)
    return value


MAX_REPR = 1_000_000
SETUP_FD = 5  # the run's end of the server's setup pipe, closed before the code runs


class _Channel:
    """The run's side of the parent's channel: reports out on fd 3 (with the nonce, which
    the parent requires), messages in on fd 4 (one JSON object a line)."""

    def __init__(self, nonce: str, ctl: typing.BinaryIO) -> None:
        self.nonce = nonce
        self.ctl = ctl

    def report(self, obj: dict) -> None:
        _report(obj, self.nonce)

    def receive(self) -> dict | None:
        line = self.ctl.readline()
        return json.loads(line) if line else None


class _Streams:
    """The run's real stdio; each test starts with them again: a program may have replaced
    sys.stdout, closed it, or closed or redirected fd 1 or 2 (e.g. an `open(1, "w")` that is
    collected), and the next test must still reach the parent."""

    def __init__(self) -> None:
        self.saved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in (1, 2)]
        self.out = self.err = sys.stdout
        self.reset()
        sys.stdin = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, self.out, self.err

    def reset(self) -> None:
        for saved, fd in zip(self.saved, (1, 2), strict=True):
            try:
                os.dup2(saved, fd)
            except OSError:  # the program closed our copy too: it only loses its own output
                pass
        if self.out.closed or self.out.fileno() != 1:
            self.out = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        if self.err.closed or self.err.fileno() != 2:
            self.err = open(
                2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1
            )
        sys.stdout, sys.stderr = self.out, self.err

    def flush(self) -> None:
        for stream in (sys.stdout, sys.stderr, self.out, self.err):
            try:
                stream.flush()
            except Exception:
                pass


def _set_stdin(text: str) -> None:
    """A fresh fd 0 holding `text` (a memfd: `open(0)`, `os.read(0)` and `.buffer` work, and
    the program sees the end of its input)."""
    data = text.encode("utf-8", "surrogateescape")
    try:
        fd = os.memfd_create("stdin", 0)
    except (AttributeError, OSError):
        fd = os.open(".", os.O_TMPFILE | os.O_RDWR, 0o600)
    _write_all(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    if fd != 0:  # 0 when the program closed its stdin: then it is already in place
        os.dup2(fd, 0)
        os.close(fd)


def _failure(exc: BaseException, out: dict) -> None:
    """What an exception ends a test with: SystemExit as exit_called, else its type."""
    if isinstance(exc, SystemExit):
        if exc.code is None or isinstance(exc.code, int):
            out["exit_called"] = exc.code or 0
        else:
            sys.stderr.write(f"{exc.code}\n")
            out["exit_called"] = 1
    else:
        out["exception"] = type(exc).__name__
        _print_exc(exc)


def _literal(text: str) -> object:
    """A Python literal, `nan` and `inf` included (repr writes floats so); raises otherwise."""

    class Floats(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            return ast.Constant(float(node.id)) if node.id in ("nan", "inf") else node

    return ast.literal_eval(Floats().visit(ast.parse(text, mode="eval")))


def _tests(req: dict, chan: _Channel, streams: _Streams, compiled: types.CodeType) -> None:
    """All tests of one attempt, in order, as LiveCodeBench's run_test runs them in its one
    process. stdin: the program runs again for each test in a fresh `__main__` (imported
    modules stay loaded); call: one module and one `Solution()` serve every test. Each test's
    end is reported; the parent compares and decides whether to send the next one."""
    base: dict = {}
    exec(PRELUDE, base)
    base = {k: v for k, v in base.items() if not k.startswith("__")}
    fn = None
    g: dict = {}
    if req["mode"] == "call":
        module = _module("solution")
        g = module.__dict__
        g.update(base)
        out: dict = {}
        try:
            exec(compiled, g)
            name = req["fn_name"]
            cls = g.get("Solution")
            fn = getattr(cls(), name) if isinstance(cls, type) else g.get(name)
            if fn is None:
                raise NameError(f"name {name!r} is not defined")
        except BaseException as exc:
            _failure(exc, out)
            streams.flush()
            chan.report(out)  # as LiveCodeBench: the program fails every test
            return
    chan.report({"ready": True})
    while (msg := chan.receive()) is not None:
        out = {"test": msg["test"]}
        if fn is None:  # stdin: the previous test's namespace goes first, with the files it
            g.clear()  # held (an `open(1, "w")` closes fd 1 when collected), before fds reset
            g = _module("__main__").__dict__
            g.update(base)
        streams.reset()
        try:
            if fn is None:
                _set_stdin(msg["input"])
                sys.stdin = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)
                g.update(stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr)  # the prelude's
                try:
                    exec(compiled, g)
                except SystemExit:  # as LiveCodeBench: the output so far is the answer
                    pass
                out["done"] = True
            else:
                result = _plain(fn(*msg["args"]))
                if isinstance(result, tuple):  # as LiveCodeBench: a top-level tuple is a list
                    result = list(result)
                out["repr"] = repr(result)[:MAX_REPR]
        except BaseException as exc:
            _failure(exc, out)
        streams.flush()
        chan.report(out)


def _serve(chan: _Channel, streams: _Streams, g: dict) -> None:
    """The solution's side of assert tests: answer each call the test process makes (through
    the parent) with the value's repr, or how it failed."""
    chan.report({"ready": True})
    while (msg := chan.receive()) is not None:
        streams.reset()
        try:
            fn = g.get(msg["call"])
            if fn is None:
                raise NameError(f"name {msg['call']!r} is not defined")
            args, kwargs = _literal(msg["args"])
            reply = ["value", repr(_plain(fn(*args, **kwargs)))[:MAX_REPR]]
        except SystemExit as exc:
            out: dict = {}
            _failure(exc, out)
            reply = ["exit", out["exit_called"]]
        except BaseException as exc:
            reply = ["raise", type(exc).__name__, str(exc)[:1000]]
            _print_exc(exc)
        streams.flush()
        chan.report({"seq": msg["seq"], "reply": reply})


def _remote(name: str, chan: _Channel, seqs: typing.Iterator[int]) -> typing.Callable:
    """A stand-in for the solution's `name` in the test process: the arguments go to the
    solution's process as values, the value comes back (or the exception, by type name)."""

    def call(*args: object, **kwargs: object) -> object:
        shown = repr(args)[:200]
        payload = repr((args, kwargs))
        try:
            _literal(payload)
        except Exception:
            raise TypeError(
                f"{name}{shown}: the arguments are not plain Python values, so they cannot be "
                "passed to the solution"
            ) from None
        seq = next(seqs)
        chan.report({"call": name, "args": payload, "seq": seq})
        msg = chan.receive()
        reply = msg.get("reply") if isinstance(msg, dict) and msg.get("seq") == seq else None
        if not isinstance(reply, list) or not reply:
            raise RuntimeError(f"{name}{shown}: the solution's process did not answer")
        if reply[0] == "exit":
            raise SystemExit(reply[1])
        if reply[0] == "raise":
            found = vars(builtins).get(str(reply[1]))
            if not (isinstance(found, type) and issubclass(found, Exception)):
                found = RuntimeError
            raise found(f"{name}{shown} raised {reply[1]}: {reply[2]}")
        try:
            return _literal(reply[1])
        except Exception:
            raise TypeError(
                f"{name}{shown} returned {reply[1][:200]}, not a plain Python value"
            ) from None

    call.__name__ = call.__qualname__ = name
    return call


def _check(req: dict, chan: _Channel, streams: _Streams, g: dict) -> None:
    """The test side of assert tests: each test code in turn, with the solution's names bound
    to `_remote` stand-ins; a test passes when it (and check(entry_point)) ends normally."""
    seqs = itertools.count()
    for name in req["names"]:
        g[name] = _remote(name, chan, seqs)
    tests = [_source(f"test_{i}.py", t) for i, t in enumerate(req["tests"])]
    base = dict(g)
    entry = req.get("entry_point")
    chan.report({"ready": True})
    while (msg := chan.receive()) is not None:
        streams.reset()
        k = msg["test"]
        out: dict = {"test": k}
        g.clear()
        g.update(base)
        try:
            exec(tests[k], g)
            if entry and callable(g.get("check")):
                g["check"](g[entry])
            out["ok"] = True
        except BaseException as exc:
            _failure(exc, out)
        streams.flush()
        chan.report(out)


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = "solution.py"
    sys.modules[name] = module
    return module


def _run_user(req: dict) -> None:
    """Run the untrusted code under the harness `req["harness"]` and exit.

    stdin and verify: one program run; tests: all tests of an attempt; serve and check: the
    two processes of assert tests (the solution's, and the test code's)."""
    ctl = open(4, "rb", closefd=False)
    req = {**req, **json.loads(ctl.readline())}  # the code and data: never the server's
    nonce = req.pop("nonce")
    harness = req["harness"]
    streams = _Streams()
    chan = _Channel(nonce, ctl)
    sys.argv = ["solution.py"]
    sys.path.insert(0, os.getcwd())
    if hasattr(sys, "set_int_max_str_digits"):  # as LiveCodeBench: big ints print
        sys.set_int_max_str_digits(50000)
    # LiveCodeBench imports call-based programs as a module: an `if __name__ == "__main__":`
    # driver does not run there, so not here either
    g = _module("__main__" if harness in ("stdin", "check") else "solution").__dict__
    try:
        if req.get("prefix"):
            exec(_source("prompt.py", req["prefix"]), g)
        compiled = _source("solution.py", req["code"])
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc))
        chan.report({"compile_error": text})
        sys.stderr.write(text)
        sys.stderr.flush()
        os._exit(1)
    code = 0
    try:
        if harness == "tests":
            _tests(req, chan, streams, compiled)
        elif harness == "check":
            exec(compiled, g)
            _check(req, chan, streams, g)
        elif harness == "serve":
            exec(compiled, g)
            _serve(chan, streams, g)
        elif harness == "stdin":
            exec(PRELUDE, g)
            exec(compiled, g)
        elif harness == "verify":
            exec(compiled, g)
            value = g["verify"](req["data"])
            if isinstance(value, tuple | list) and len(value) == 2:
                passed, feedback = value
                value = [passed, feedback if isinstance(feedback, str) else repr(feedback)]
            elif not isinstance(value, bool):
                value = repr(value)[:1000]
            chan.report({"value": value})
    except SystemExit as exc:
        out: dict = {}
        _failure(exc, out)
        code = out["exit_called"]
        if harness != "stdin":
            chan.report(out)
    except BaseException as exc:
        chan.report({"exception": type(exc).__name__})
        _print_exc(exc)
        code = 1
    streams.flush()
    os._exit(code)


# ------------------------------------------------------- the server: one slot's world and runs


class World:
    """What the server set up once: namespace fds, cgroup files, the seccomp filter."""

    def __init__(self) -> None:
        self.cgroup_procs: list[int] = []  # cgroup.procs of the slot (one per v1 hierarchy)
        self.memory_fd: int | None = None  # memory.max (v2) or memory.limit_in_bytes (v1)
        self.oom_fd: int | None = None  # memory.events (v2) or memory.oom_control (v1)
        self.stat_fd: int | None = None  # memory.stat
        self.seccomp: bytes | None = None
        self.install_seccomp = None
        self.base_vm = 0  # our address space, bytes (the RLIMIT_AS fallback sits above it)
        self.syscalls: dict[str, int] = {}
        # (alias, path) of python roots under /tmp: each run's private /tmp would hide them,
        # so the root keeps them at the alias and every run binds them back in.
        self.tmp_roots: list[tuple[str, str]] = []
        self.tmp_links: list[tuple[str, str]] = []  # (path, real) of linked roots under /tmp
        self.setup_fd = -1  # in a run: where its setup reports how it failed


WORLD = World()


def _syscall(name: str, *args: object) -> int:
    return libc.syscall(WORLD.syscalls[name], *args)


def _bind(src: str, dst: str, flags: int) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(src, dst, None, MS_BIND, None)
    _mount("none", dst, None, MS_REMOUNT | MS_BIND | flags, None)


def _python_roots() -> tuple[list[str], dict[str, str]]:
    """Directories the interpreter imports from that /usr does not already hold, and the
    paths of them reached through a symlink (path -> real directory), e.g. a checkout whose
    environment links to another's: those become symlinks in the root, not mounts."""
    roots: set[str] = set()
    links: dict[str, str] = {}
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        path, real = os.path.abspath(p), os.path.realpath(p)
        for q in {path, real}:
            top = q.strip("/").split("/")[0]
            if q == "/":
                raise OSError(f"the sandbox python's prefix {p!r} would expose the whole host")
            if top not in SYSTEM_DIRS:
                roots.add(q)
        if path != real and path in roots:
            roots.discard(path)
            links[path] = real
    return sorted(roots), links


def _etc(new: str, old: str, uid: int | None) -> None:
    os.mkdir(f"{new}/etc", 0o755)
    u = uid if uid is not None else 65534
    files = {
        "passwd": f"root:x:0:0::/:/bin/sh\nsandbox:x:{u}:{u}::/tmp/work:/bin/sh\n",
        "group": f"root:x:0:\nsandbox:x:{u}:\n",
        "hosts": "127.0.0.1 localhost\n",
        "hostname": "sandbox\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
    }
    for name, text in files.items():
        with open(f"{new}/etc/{name}", "w") as f:
            f.write(text)
    try:
        with open(f"{old}/etc/ld.so.cache", "rb") as src, open(f"{new}/etc/ld.so.cache", "wb") as f:
            f.write(src.read())
    except OSError:
        pass
    if os.path.islink(f"{old}/etc/localtime"):
        os.symlink(os.readlink(f"{old}/etc/localtime"), f"{new}/etc/localtime")


def _build_root(cfg: dict) -> None:
    """Pivot into the minimal root described in the module docstring (read-only at the end)."""
    roots, links = _python_roots()
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    os.mkdir("/tmp/old")
    _libc(_syscall("pivot_root", b"/tmp", b"/tmp/old"), "pivot_root")
    os.chdir("/")
    old, new = "/old", "/new"
    os.mkdir(new)
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    ro = MS_RDONLY | MS_NOSUID | MS_NODEV
    for name in SYSTEM_DIRS:
        src = f"{old}/{name}"
        if os.path.islink(src):
            os.symlink(os.readlink(src), f"{new}/{name}")
        elif os.path.isdir(src):
            _bind(src, f"{new}/{name}", ro)
    _etc(new, old, cfg["uid"])
    os.makedirs(f"{new}/dev")
    os.symlink("/tmp/shm", f"{new}/dev/shm")
    for dev in DEVICES:
        _bind(f"{old}/dev/{dev}", f"{new}/dev/{dev}", MS_NOSUID | MS_NOEXEC)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{new}/dev/{name}")
    os.symlink("/proc/self/fd", f"{new}/dev/fd")
    for d in ("proc", "tmp", "var"):
        os.mkdir(f"{new}/{d}", 0o755)
    os.symlink("/tmp", f"{new}/var/tmp")
    for root in [*roots, *links]:  # last: a root may lie under a directory made above (/var)
        top = root.split("/")[1]
        if top in ("proc", "dev") or root in ("/var/tmp", "/etc") or root.startswith("/var/tmp/"):
            raise OSError(
                f"the sandbox python's prefix {root!r} lies where the sandbox mounts "
                "its own files: install it elsewhere (SDPO_SANDBOX_PYTHON)"
            )
        if root in links:
            os.makedirs(os.path.dirname(new + root), exist_ok=True)
            os.symlink(links[root], new + root)
            if top == "tmp":
                WORLD.tmp_links.append((root, links[root]))
            continue
        if top == "tmp":
            alias = f"/dev/.tmp-roots/{len(WORLD.tmp_roots)}"  # not a new top-level name
            _bind(old + root, new + alias, ro)
            WORLD.tmp_roots.append((alias, root))
        _bind(old + root, new + root, ro)
    os.chdir(new)
    _libc(_syscall("pivot_root", b".", b"."), "pivot_root")
    _libc(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    _mount("none", "/", None, MS_REMOUNT | MS_BIND | ro, None)


def _load_seccomp() -> tuple[bytes, object, dict[str, int]]:
    import importlib.util
    import platform

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_seccomp.py")
    spec = importlib.util.spec_from_file_location("_sdpo_seccomp", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_filter(), mod.install, mod.syscall_numbers(platform.machine())


def _prepare_slot(cfg: dict) -> None:
    """Set up this slot's world once; raises what stops it (reported as the start error)."""
    if cfg["uid"] is not None and os.geteuid() != 0:
        raise OSError("switching to the slot uid needs root")
    WORLD.seccomp, WORLD.install_seccomp, WORLD.syscalls = _load_seccomp()
    _syscall("keyctl", KEYCTL_JOIN_SESSION_KEYRING, None)  # a fresh, empty session keyring
    cg = cfg.get("cgroup")
    if cg:
        WORLD.cgroup_procs = [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in cg["procs"]]
        WORLD.memory_fd = os.open(cg["memory"], os.O_WRONLY | os.O_CLOEXEC)
        WORLD.oom_fd = os.open(cg["oom"], os.O_RDONLY | os.O_CLOEXEC)
        WORLD.stat_fd = os.open(cg["stat"], os.O_RDONLY | os.O_CLOEXEC)
    os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for name in cfg.get("preload", ()):  # before the namespaces: they need one thread
        try:
            __import__(name)
        except Exception:  # absent or broken in this environment: runs import it themselves
            pass
    with open("/proc/self/statm") as f:
        WORLD.base_vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    for fd in WORLD.cgroup_procs:  # join once, after the imports (their memory stays outside):
        os.write(fd, b"0")  # the runs are born inside; moving each run in costs more
    if not cfg["namespaces"]:  # orphans of the runs become our children, to kill and reap
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        return
    _libc(libc.unshare(SLOT_NS | CLONE_NEWPID), "unshare")
    socket.sethostname("sandbox")
    pid = os.fork()  # the server goes on as PID 1 of the slot's PID namespace
    if pid:
        _, status = os.waitpid(pid, 0)  # the process our parent started just waits
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _build_root(cfg)


def _cgroup_value(fd: int | None, key: str) -> int:
    if fd is None:
        return 0
    for line in os.pread(fd, 1 << 16, 0).decode().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _set_memory_limit(memory_mb: int) -> bool:
    """The slot's limit: the run's memory_mb on top of the server's own anonymous memory (rss
    in v1, anon in v2; page cache is left to reclaim). False if the kernel refuses it."""
    assert WORLD.memory_fd is not None
    own = max(_cgroup_value(WORLD.stat_fd, "rss"), _cgroup_value(WORLD.stat_fd, "anon"))
    try:
        os.pwrite(WORLD.memory_fd, str(memory_mb * 1024 * 1024 + own).encode(), 0)
        return True
    except OSError:  # EBUSY: more than that is in use and cannot be reclaimed
        return False


def _oom_kills() -> int:
    if WORLD.oom_fd is None:
        return 0
    for line in os.pread(WORLD.oom_fd, 4096, 0).decode().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


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


def _reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


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


def _supervise(req: dict, cfg: dict, fds: list[int]) -> dict:
    """Run one request in a fresh process, enforce the wall-clock limit, describe the end.

    `fds`: the run's stdin, stdout, stderr, result channel and message channel, then the
    parent's kill pipe (a byte or its end kills the run). How the run's setup failed, if it
    did, comes back on a pipe the code never holds, so no run can claim it."""
    workdir = None
    kill_fd = fds.pop()
    if WORLD.memory_fd is not None and not _set_memory_limit(int(req["memory_mb"])):
        for fd in fds:
            os.close(fd)
        fds.clear()  # the limit is below what is already in use: as if killed at it
        os.close(kill_fd)
        return {"exit": None, "signal": None, "timed_out": False, "oom": True, "wall_s": 0.0,
                "cpu_s": 0.0, "maxrss_kb": 0}  # fmt: skip
    oom_before = _oom_kills()
    if not cfg["namespaces"]:
        workdir = tempfile.mkdtemp(prefix="sdpo-sandbox-")
    setup_r, setup_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the run
        WORLD.setup_fd = setup_w
        try:
            os.close(setup_r)
            os.close(kill_fd)
            workdir = _setup_root(cfg, workdir)
            _drop(req, cfg, [*fds, setup_w], workdir)
            _run_user(req)
        except BaseException as exc:
            try:
                _write_all(WORLD.setup_fd, repr(exc).encode()[:4000])
            finally:
                os._exit(111)
    os.close(setup_w)
    for fd in fds:
        os.close(fd)
    fds.clear()
    pidfd = os.pidfd_open(pid)
    budget = float(req.get("budget_s") or req["timeout_s"])
    ready, _, _ = select.select([pidfd, kill_fd], [], [], budget)
    os.close(pidfd)
    os.close(kill_fd)
    timed_out = pidfd not in ready
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    if cfg["namespaces"]:  # we are the init of the slot's PID namespace: all else is the run's
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap_all()
    else:  # no PID namespace to take the stragglers down with it
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if cfg["uid"] is not None:
            _kill_uid(cfg["uid"])
        _kill_children()
        shutil.rmtree(workdir, ignore_errors=True)
    os.set_blocking(setup_r, False)
    try:
        setup_error = os.read(setup_r, 4096).decode("utf-8", "replace")
    except OSError:
        setup_error = ""
    os.close(setup_r)
    reply = {
        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "timed_out": timed_out,
        "oom": _oom_kills() > oom_before,
        "wall_s": round(wall, 6),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 6),
        "maxrss_kb": usage.ru_maxrss,
    }
    if setup_error:
        reply["setup_error"] = setup_error
    return reply


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    cfg = json.loads(os.environ.pop("SDPO_SANDBOX_SLOT"))  # not in argv: runs see our cmdline
    try:
        _prepare_slot(cfg)
        gc.collect()
        gc.freeze()  # a run's collections never touch (so never copy) the server's objects
        hello: dict = {"ready": True}
    except Exception as exc:
        hello = {"error": f"{type(exc).__name__}: {exc}"}
    sock.sendall((json.dumps(hello) + "\n").encode())
    if "error" in hello:
        return
    while True:
        try:
            head, fds, _, _ = socket.recv_fds(sock, 8, 6)
        except OSError:
            return
        if not head:
            return  # the parent went away
        try:
            (size,) = struct.unpack(">Q", _recv_exact(sock, 8, head))
            req = json.loads(_recv_exact(sock, size))
        except (EOFError, ValueError):
            return
        try:
            reply = _supervise(req, cfg, fds)
        except Exception as exc:
            reply = {"error": repr(exc)}
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        sock.sendall((json.dumps(reply) + "\n").encode())


if __name__ == "__main__":
    _ = (io, _PRELOADED, _PRELOADED2)
    main()
