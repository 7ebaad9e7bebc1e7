"""The in-run harness: what a run's process executes once the fork server has isolated it.
Stdlib only; the fork server loads it by path (never as part of the package) before it forks.

`run(req)` reads the run's code and data from its message channel (fd 4; the server never holds
them), then runs the code under one harness and exits:
  stdin   one program run on the given stdin (LiveCodeBench's import header first)
  verify  a user's `verify(data)`; its value is reported
  tests   all tests of an attempt, in order, in this one process, as LiveCodeBench's `run_test`
          runs them: the parent sends each test as a JSON line, and each test's end is reported
  serve   the solution's side of assert tests: answers each call the test process makes
  check   the test code's side of assert tests: the solution's names are stand-ins whose calls
          go, as values, through the parent to the `serve` process
Reports go out on fd 3 as JSON lines carrying the run's nonce; the parent treats them as data
(the code under test writes to the same channel if it likes) and compares values itself.
"""

import ast
import bisect
import builtins
import collections
import copy
import datetime
import decimal
import fcntl
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
import statistics
import string
import sys
import traceback
import types
import typing

# The modules of LiveCodeBench's import header, loaded once in the server: no run pays for them.
_PRELOADED = (bisect, collections, copy, datetime, decimal, fractions, functools, heapq, io)
_PRELOADED2 = (itertools, math, operator, random, re, statistics, string, typing)

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


def write_all(fd: int, data: bytes) -> None:
    """All of `data` (a pipe may take part of it per write); the server writes with it too."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _report(obj: dict, nonce: str) -> None:
    """One line on the result channel; the parent ignores every line without the nonce."""
    try:
        write_all(3, (json.dumps({**obj, "nonce": nonce}) + "\n").encode())
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

    def __init__(self, restorable: bool) -> None:
        # copies of fd 1 and 2 (at 64 and 65) only for runs of several tests: they restore
        # them between tests; a one-program run holds no descriptor it does not need
        fds = (1, 2) if restorable else ()
        self.saved = [(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64), fd) for fd in fds]
        self.out = self.err = sys.stdout
        self.reset()
        sys.stdin = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, self.out, self.err

    def reset(self) -> None:
        for saved, fd in self.saved:
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
    write_all(fd, data)
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


def run(req: dict) -> None:
    """Run the untrusted code under the harness `req["harness"]` and exit.

    stdin and verify: one program run; tests: all tests of an attempt; serve and check: the
    two processes of assert tests (the solution's, and the test code's)."""
    ctl = open(4, "rb", closefd=False)
    req = {**req, **json.loads(ctl.readline())}  # the code and data: never the server's
    nonce = req.pop("nonce")
    harness = req["harness"]
    one_program = harness in ("stdin", "verify")  # no messages after the code: close fd 4
    if one_program:
        os.close(4)
    else:
        os.set_inheritable(4, False)
    os.set_inheritable(3, False)  # a program the code execs gets stdio only
    streams = _Streams(restorable=not one_program)
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
            if isinstance(value, tuple | list) and len(value) in (2, 3):
                passed, feedback, *score = value
                text = feedback if isinstance(feedback, str) else repr(feedback)
                value = [passed, text, *(s if type(s) in (int, float) else repr(s) for s in score)]
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
