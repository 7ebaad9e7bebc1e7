"""Fork server (zygote) of one sandbox slot, stdlib only. Runs as `<sandbox python> -I`.

It loads nothing but the stdlib and, by path, its siblings _harness.py (what a run executes)
and _seccomp.py, never the package (the sandbox python need not have it, nor its dependencies):
it starts with an empty environment and holds nothing secret, so a forked copy of it is a clean
place to run untrusted code. Loading the harness and the modules it pre-imports once here (and
forking per run) saves the interpreter start-up of a fresh process per test.

At start (namespaces mode) the server moves into its own mount, network, UTS, IPC and PID
namespaces, going on as PID 1 of the latter, and pivots into a minimal root: a read-only
tmpfs holding /usr and the interpreter's own prefix (bound read-only), a synthetic /etc, a few
/dev nodes, the slot's /proc, and nothing else (no project files, no data directories, no
/run). It serves runs one at a time, itself acting as their supervisor, from inside the
slot's cgroup (memory and process limits for everything a run starts, tmpfs included; a run is
the OOM killer's first choice). Per run it forks the run's process, which unshares a fresh
mount namespace, mounts a private tmpfs on /tmp (/dev/shm and /var/tmp point into it), drops
to the slot uid with rlimits and no_new_privs, installs the seccomp filter (_seccomp.py) and
executes the code under the harness (_harness.py). The server enforces the run's wall-clock
budget (the parent each test's limit, through the kill pipe); when the run's process has ended
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

import ctypes
import fcntl
import gc
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import types

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


def _recv_exact(sock: socket.socket, n: int, first: bytes = b"") -> bytes:
    buf = bytearray(first)
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


# ------------------------------------------------ a run's process: from the fork to the code

SETUP_FD = 5  # the run's end of the server's setup pipe, closed before the code runs


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


# ------------------------------------------------------- the server: one slot's world and runs


class World:
    """What the server set up once: namespace fds, cgroup files, the seccomp filter, the
    harness."""

    def __init__(self) -> None:
        self.cgroup_procs: list[int] = []  # cgroup.procs of the slot (one per v1 hierarchy)
        self.memory_fd: int | None = None  # memory.max (v2) or memory.limit_in_bytes (v1)
        self.oom_fd: int | None = None  # memory.events (v2) or memory.oom_control (v1)
        self.stat_fd: int | None = None  # memory.stat
        self.seccomp: bytes | None = None
        self.install_seccomp = None
        self.harness: types.ModuleType | None = None  # _harness.py: run(req) runs the code
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


def _load(name: str) -> types.ModuleType:
    """Our sibling file `name`.py, by path (`-I` keeps this directory off sys.path); before
    the pivot into the minimal root, which does not hold it."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_sdpo{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_seccomp() -> tuple[bytes, object, dict[str, int]]:
    import platform

    mod = _load("_seccomp")
    return mod.build_filter(), mod.install, mod.syscall_numbers(platform.machine())


def _prepare_slot(cfg: dict) -> None:
    """Set up this slot's world once; raises what stops it (reported as the start error)."""
    if cfg["uid"] is not None and os.geteuid() != 0:
        raise OSError("switching to the slot uid needs root")
    WORLD.seccomp, WORLD.install_seccomp, WORLD.syscalls = _load_seccomp()
    WORLD.harness = _load("_harness")  # with the modules it pre-imports, before base_vm
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
        return {"exit": None, "signal": None, "timed_out": False, "oom": True, "oom_kills": 0,
                "cgroup": True, "wall_s": 0.0, "cpu_s": 0.0, "maxrss_kb": 0}  # fmt: skip
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
            WORLD.harness.run(req)
        except BaseException as exc:
            try:
                WORLD.harness.write_all(WORLD.setup_fd, repr(exc).encode()[:4000])
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
        "oom": (oom_kills := max(0, _oom_kills() - oom_before)) > 0,
        "oom_kills": oom_kills,  # processes of the run the kernel killed at its memory limit
        "cgroup": WORLD.memory_fd is not None,  # whether a memory cgroup held the run
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
    main()
