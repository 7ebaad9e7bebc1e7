"""Containment: hostile code gets a verdict in bounded time, the host is unaffected, and no
process of the sandbox uids is left behind. Real processes, no mocks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from sdpo_core.verifiers import build_verifier, parse_verifier
from sdpo_core.verifiers.kinds.tests import TestsVerifier
from sdpo_sandbox import Job, RunResult, Sandbox, SandboxError, SandboxSettings
from sdpo_sandbox._settings import PROJECT_SANDBOX_PYTHON

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the namespace sandbox needs root")


@pytest.fixture(scope="module")
def sandbox():
    settings = SandboxSettings(slots=2, max_output_bytes=1 << 20, nproc=32)
    with Sandbox(settings) as sb:
        sb.run(Job(code="pass"))  # start the slots
        yield sb


def leftovers(uids: list[int]) -> list[str]:
    """Processes on the host whose real uid is one of the sandbox uids."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if int(uid_line.split()[1]) in uids:
            found.append(f"{pid}: {status.splitlines()[0]}")
    return found


def run(sb: Sandbox, code: str, timeout_s: float = 2.0, **kw) -> tuple[RunResult, float]:
    start = time.monotonic()
    result = sb.run(Job(code=textwrap.dedent(code), timeout_s=timeout_s, **kw))
    elapsed = time.monotonic() - start
    assert leftovers(sb.uids) == []
    return result, elapsed


def test_isolated_identity(sandbox):
    r, _ = run(
        sandbox,
        """
        import os, socket
        print(os.getuid(), os.getgid(), os.getgroups(), os.getpid(), socket.gethostname())
        print(os.getcwd(), sorted(p for p in os.listdir('/proc') if p.isdigit()))
        """,
    )
    uid, gid, groups, pid, host = r.stdout.splitlines()[0].split(" ", 4)
    assert int(uid) in sandbox.uids and int(uid) != 0 and int(gid) == int(uid)
    assert groups == "[]" and host == "sandbox"
    # the slot's PID namespace: its init (the fork server, root) and this run
    assert r.stdout.splitlines()[1] == f"/tmp/work {sorted(['1', pid])}" and pid != "1"


def test_infinite_loop(sandbox):
    r, elapsed = run(sandbox, "while True: pass", timeout_s=1.0)
    assert r.status == "timeout" and elapsed < 6


def test_fork_bomb(sandbox):
    r, elapsed = run(
        sandbox,
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        timeout_s=2.0,
    )
    assert r.status == "timeout" and elapsed < 10
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_memory_bomb(sandbox):
    r, elapsed = run(sandbox, "a = []\nwhile True:\n    a.append(bytearray(10**7))", memory_mb=256)
    assert r.status == "memory" and elapsed < 6
    r, _ = run(sandbox, "x = ' ' * (10**10)", memory_mb=256)
    assert r.status == "memory"


def test_gigabyte_print(sandbox):
    code = "import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)"
    r, elapsed = run(sandbox, code)
    assert r.status == "output_limit" and elapsed < 6
    assert len(r.stdout) == sandbox.settings.max_output_bytes


def test_no_network(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        r, elapsed = run(
            sandbox,
            f"""
            import socket
            for addr in [("127.0.0.1", {port}), ("203.0.113.1", 80)]:
                s = socket.socket()
                s.settimeout(1.5)
                try:
                    s.connect(addr)
                    print(addr[0], "CONNECTED")
                except OSError as e:
                    print(addr[0], type(e).__name__, e.errno)
            """,
            timeout_s=5.0,
        )
        with pytest.raises(TimeoutError):
            server.accept()  # nothing reached the host's listening socket
    finally:
        server.close()
    assert "CONNECTED" not in r.stdout
    lines = r.stdout.splitlines()
    assert lines[0].startswith("127.0.0.1 ") and lines[1].startswith("203.0.113.1 ")
    assert elapsed < 2.5  # refused at once: there is no route, not even loopback


def test_writes_stay_inside(sandbox):
    tag = uuid.uuid4().hex
    targets = [
        f"/tmp/escape-{tag}",
        f"/var/tmp/escape-{tag}",
        f"/dev/shm/escape-{tag}",
        str(ROOT / f"escape-{tag}"),
        f"/root/escape-{tag}",
        f"/etc/escape-{tag}",
    ]
    r, _ = run(
        sandbox,
        f"""
        import os
        for path in {targets!r} + ["here-{tag}"]:
            try:
                with open(path, "w") as f:
                    f.write("x")
                print("wrote", path)
            except OSError as e:
                print("denied", path, e.errno)
        print(os.getcwd())
        """,
    )
    assert r.status == "ok"
    out = r.stdout
    for path in targets[3:]:
        assert f"denied {path}" in out  # the host's own directories are not writable
    for path in targets:
        assert not Path(path).exists()  # and the private tmpfs went away with the run
    assert f"wrote here-{tag}" in out
    assert not Path("/tmp/work").joinpath(f"here-{tag}").exists()


def test_service_environment_is_not_readable(sandbox, monkeypatch):
    secret = "sdpo-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("SDPO_API_KEY_FOR_TEST", secret)
    r, _ = run(
        sandbox,
        f"""
        import os
        print(dict(os.environ))
        for pid in os.listdir('/proc'):
            try:
                print(open(f'/proc/{{pid}}/environ').read())
            except OSError:
                pass
        for pid in ({os.getpid()}, {os.getppid()}):
            try:
                print(open(f'/proc/{{pid}}/environ').read())
            except OSError as e:
                print('no', pid, e.errno)
        """,
    )
    assert r.status == "ok"
    assert secret not in r.stdout + r.stderr
    assert "SDPO_API_KEY_FOR_TEST" not in r.stdout
    assert sorted(eval(r.stdout.splitlines()[0])) == [
        "HOME",
        "LANG",
        "LC_ALL",
        "PATH",
        "PWD",
        "PYTHONIOENCODING",
        "TMPDIR",
    ]


def test_killing_the_parent(sandbox):
    r, _ = run(
        sandbox,
        f"""
        import os, signal
        for pid in (os.getppid(), 1, -1, {os.getpid()}, {os.getppid()}):
            try:
                os.kill(pid, signal.SIGKILL)
                print("sent", pid)
            except OSError as e:
                print("failed", pid, e.errno)
        """,
    )
    assert f"sent {os.getpid()}" not in r.stdout
    again, _ = run(sandbox, "print('still here')")
    assert again.status == "ok" and again.stdout == "still here\n"


def test_sleep_outliving_the_run(sandbox):
    r, elapsed = run(
        sandbox,
        "import subprocess, time\nsubprocess.Popen(['sleep', '600'])\ntime.sleep(600)",
        timeout_s=1.0,
    )
    assert r.status == "timeout" and elapsed < 6
    # a detached background sleep after a clean exit dies with the run's PID namespace
    r, _ = run(sandbox, "import os\nos.system('setsid sleep 600 &')\nprint('bye')")
    assert r.status == "ok" and r.stdout == "bye\n"


def test_closing_stdout_early(sandbox):
    r, elapsed = run(
        sandbox, "import os, time\nprint('partial', flush=True)\nos.close(1)\ntime.sleep(600)"
    )
    assert r.status == "timeout" and r.stdout == "partial\n" and elapsed < 6
    r, _ = run(sandbox, "import os\nprint('bye', flush=True)\nos.close(1)\nos.close(2)")
    assert r.status == "ok" and r.stdout == "bye\n"


def test_attempts_run_in_parallel_on_distinct_uids(sandbox):
    code = "import os, time\ntime.sleep(1)\nprint(os.getuid())"
    jobs = [Job(code=code, timeout_s=5.0, group=i) for i in range(4)]
    start = time.monotonic()
    results = sandbox.run_many(jobs)
    elapsed = time.monotonic() - start
    assert all(r.status == "ok" for r in results)
    assert {int(r.stdout) for r in results} == set(sandbox.uids) and len(sandbox.uids) == 2
    assert elapsed < 3.8  # 4 one-second runs over 2 slots, not one after the other
    assert leftovers(sandbox.uids) == []


def test_verify_batch_contains_hostile_attempts(sandbox):
    spec = parse_verifier(
        {"kind": "tests", "tests": [{"input": "2\n", "output": "4\n"}], "timeout_s": 1}
    )
    v = spec.build(sandbox=sandbox)
    good = "```python\nprint(int(input()) * 2)\n```"
    bomb = "```python\nimport os\nwhile True:\n    os.fork()\n```"
    start = time.monotonic()
    verdicts = v.verify_batch([good, bomb, good, "```python\nwhile True: pass\n```"])
    assert [x.passed for x in verdicts] == [True, False, True, False]
    assert verdicts[3].feedback.startswith("Time Limit Exceeded")
    assert time.monotonic() - start < 10
    assert leftovers(sandbox.uids) == []


# --------------------------------------------------------- no namespaces: refuse, or opt in

SNIPPET = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
from sdpo_core.verifiers import build_verifier
v = build_verifier({"kind": "tests", "tests": [{"input": "", "output": "ok"}]})
try:
    d = v.verify("print('ok')")
    print("VERDICT", d.passed, d.details["sandbox"])
except Exception as e:
    print("REFUSED", type(e).__name__, e)
"""


def _without_cap_sys_admin(env_extra: dict[str, str]) -> str:
    env = {**os.environ, **env_extra, "SDPO_SANDBOX_UID_BASE": "63000"}
    cmd = ["setpriv", "--bounding-set", "-sys_admin", sys.executable, "-c", SNIPPET]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    return out.stdout + out.stderr


def test_refuses_without_namespaces_unless_opted_in():
    text = _without_cap_sys_admin({"SDPO_SANDBOX": "namespaces"})
    assert "REFUSED SandboxError" in text and "SDPO_SANDBOX=unsafe-local" in text
    text = _without_cap_sys_admin({"SDPO_SANDBOX": "unsafe-local"})
    assert "VERDICT True unsafe-local" in text
    assert "WARNING" in text and "WITHOUT namespaces" in text


def test_unsafe_local_mode_still_limits_and_cleans_up():
    settings = SandboxSettings(mode="unsafe-local", slots=1, uid_base=63100)
    with Sandbox(settings) as sb:
        r, elapsed = run(sb, "import os\nos.system('sleep 600 &')\nwhile True: pass", 1.0)
        assert r.status == "timeout" and r.mode == "unsafe-local" and elapsed < 6
        v = build_verifier({"kind": "tests", "tests": [{"input": "", "output": "1"}]})
        assert isinstance(v, TestsVerifier)
        v._sandbox = sb
        assert v.verify("print(1)").details["sandbox"] == "unsafe-local"


def test_bad_settings_are_reported(monkeypatch):
    monkeypatch.setenv("SDPO_SANDBOX", "docker")
    with pytest.raises(SandboxError, match="unsafe-local"):
        SandboxSettings.from_env()


# ---------------- the minimal world: the files, sockets, keyrings and syscalls a run must not reach


def test_project_and_data_directories_are_not_visible(sandbox, tmp_path):
    tag = uuid.uuid4().hex
    data = ROOT / f"sdpo-data-test-{tag}"  # a local data directory as `sdpo serve` makes one
    data.mkdir(mode=0o755)
    (data / "appendonly.aof").write_text(f"expected output {tag}\n")
    (data / "appendonly.aof").chmod(0o644)
    try:
        paths = [str(data / "appendonly.aof"), str(ROOT / "README.md"), str(ROOT), "/root", "/home"]
        r, _ = run(
            sandbox,
            f"""
            import os
            for p in {paths!r}:
                try:
                    print(p, sorted(os.listdir(p)) if os.path.isdir(p) else open(p).read())
                except OSError as e:
                    print(p, "denied", e.errno)
            print(sorted(os.listdir("/")))
            """,
        )
    finally:
        (data / "appendonly.aof").unlink()
        data.rmdir()
    assert r.status == "ok", r
    out = r.stdout.splitlines()
    assert "expected output" not in r.stdout and "SDPO" not in r.stdout, r.stdout
    assert [line.split(" ", 1)[1] for line in out[:2]] == ["denied 2", "denied 2"]
    # the checkout shows at most the sandbox's own python environment (.venv-sandbox)
    assert out[2].split(" ", 1)[1] in ("denied 2", "[]", "['.venv-sandbox']"), out[2]
    top = set(eval(r.stdout.splitlines()[-1]))
    python = Path(sandbox.settings.python)  # where the sandbox's python lives, also through links
    python_top = {python.parts[1], python.parent.parent.resolve().parts[1]}  # its prefix
    assert top <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev"}.union(
        {"proc", "tmp", "var"}, python_top
    )
    assert "run" not in top and "home" not in top and "root" not in top


def test_host_unix_sockets_are_unreachable(sandbox):
    tag = uuid.uuid4().hex[:12]
    path = f"/run/sdpo-test-{tag}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen()
    server.settimeout(0.5)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0sdpo-test-{tag}")
    abstract.listen()
    abstract.settimeout(0.5)
    try:
        r, _ = run(
            sandbox,
            f"""
            import socket
            for addr in ({path!r}, "\\0sdpo-test-{tag}"):
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(addr)
                    print("CONNECTED", repr(addr))
                except OSError as e:
                    print("refused", e.errno)
            a, b = socket.socketpair()  # an already connected pair stays available
            a.sendall(b"x")
            print("pair", b.recv(1))
            """,
        )
        for listener in (server, abstract):
            with pytest.raises(TimeoutError):
                listener.accept()
    finally:
        server.close()
        abstract.close()
        os.unlink(path)
    assert r.status == "ok", r
    assert "CONNECTED" not in r.stdout and "pair b'x'" in r.stdout


KEYCTL = """
import ctypes, os, platform
libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
KEY_SPEC_USER_KEYRING = -4
"""


def test_keyring_does_not_carry_between_runs(sandbox):
    secret = uuid.uuid4().hex.encode()
    add = KEYCTL + textwrap.dedent(
        f"""
        for _ in range(4):
            n = libc.syscall(NR[0], b"user", b"sdpo-test", {secret!r}, {len(secret)},
                             KEY_SPEC_USER_KEYRING)
            print("added" if n > 0 else f"denied {{ctypes.get_errno()}}")
        """
    )
    look = KEYCTL + textwrap.dedent(
        """
        KEYCTL_SEARCH, KEYCTL_READ = 10, 11
        key = libc.syscall(NR[1], KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, b"user", b"sdpo-test", 0)
        buf = ctypes.create_string_buffer(256)
        n = libc.syscall(NR[1], KEYCTL_READ, key, buf, 256) if key > 0 else -1
        print("FOUND", buf.raw[: max(n, 0)]) if n > 0 else print("none", ctypes.get_errno())
        try:
            print(open("/proc/keys").read())
        except OSError as e:
            print("no /proc/keys", e.errno)
        """
    )
    first = sandbox.run_many([Job(code=add, group=i) for i in range(2)])  # both slots' uids
    assert all(r.status == "ok" for r in first), first
    later = sandbox.run_many([Job(code=look, group=i) for i in range(4)])
    for r in first + later:
        assert secret.decode() not in r.stdout and "FOUND" not in r.stdout, r
        assert "added" not in r.stdout
    assert leftovers(sandbox.uids) == []


def test_seccomp_denies_namespaces_ptrace_and_ipc(sandbox):
    r, _ = run(
        sandbox,
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def show(name, rc):
            print(name, "ALLOWED" if rc >= 0 else ctypes.get_errno())
        show("unshare(user)", libc.unshare(0x10000000))
        show("unshare(net)", libc.unshare(0x40000000))
        show("ptrace(traceme)", libc.ptrace(0, 0, None, None))
        show("shmget", libc.shmget(0x5d90, 4096, 0o1666))
        show("msgget", libc.msgget(0x5d90, 0o1666))
        for family in (16, 17, 40):  # netlink, packet, vsock (a VM's host)
            show(f"socket({family})", libc.socket(family, 1, 0))
        import socket
        socket.socket().close()  # AF_INET stays allowed (there is no route anywhere)
        print("inet ok")
        pid = os.fork()  # plain fork and threads still work
        if pid == 0:
            os._exit(7)
        print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        import threading
        t = threading.Thread(target=lambda: print("thread ran"))
        t.start(); t.join()
        """,
    )
    assert r.status == "ok", r
    assert "ALLOWED" not in r.stdout, r.stdout
    assert "fork 7" in r.stdout and "thread ran" in r.stdout and "inet ok" in r.stdout


def test_runs_do_not_see_each_others_files(sandbox):
    tag = uuid.uuid4().hex
    write = f"""
import os
for d in ("/tmp", "/dev/shm", "/tmp/work", os.environ["HOME"]):
    open(os.path.join(d, "left-{tag}"), "w").write("x")
print(os.getuid())
"""
    look = """
import os
print([os.path.join(d, f) for d in ("/tmp", "/dev/shm", "/tmp/work") for f in os.listdir(d)])
"""
    first = sandbox.run_many([Job(code=write, group=i) for i in range(2)])
    assert all(r.status == "ok" for r in first), first
    for r in sandbox.run_many([Job(code=look, group=i) for i in range(4)]):
        assert r.status == "ok" and tag not in r.stdout, r


def _cgroup_or_skip(sb: Sandbox) -> None:
    if any(getattr(slot, "cgroup", 0) is None for slot in sb._slots):
        pytest.skip("no writable cgroup on this host (see docs/verifiers.md)")


def test_memory_limit_covers_all_processes_of_a_run(sandbox):
    _cgroup_or_skip(sandbox)
    code = """
    import os, time
    for _ in range(4):  # 4 x 160 MB of touched memory, each process under 256 MB
        if os.fork() == 0:
            block = bytearray(b"x") * (160 << 20)
            print("held", flush=True)
            time.sleep(3)
            os._exit(0)
    for _ in range(4):
        os.wait()
    print("done")
    """
    r, _ = run(sandbox, code, timeout_s=6.0, memory_mb=256)
    assert r.status == "memory", r
    assert r.stdout.count("held") < 2  # (the kernel killed the process over the limit)
    r, _ = run(sandbox, "import os\nopen('/dev/shm/big', 'wb').write(b'x' * (200 << 20))\n"
               "print('wrote')", memory_mb=128)  # fmt: skip
    assert "wrote" not in r.stdout


FORKS_150MB = """
import os, time
for _ in range(5):  # 5 x 150 MB touched by forked children: the cgroup (256 MB) kills some
    if os.fork() == 0:
        block = bytearray(b"x") * (150 << 20)
        time.sleep(1)
        os._exit(0)
for _ in range(5):
    os.wait()
print(0)
"""


def test_memory_kills_are_reported_even_when_the_run_goes_on(sandbox):
    """The parent survives its children's deaths and answers: the verdict says the memory
    limit killed part of the program (details and a feedback line), not a bare Wrong Answer."""
    _cgroup_or_skip(sandbox)
    spec = {"kind": "tests", "tests": [{"input": "", "output": "4"}], "memory_mb": 256}
    v = parse_verifier({**spec, "timeout_s": 20}).build(sandbox=sandbox)
    verdict = v.verify(f"```python\n{FORKS_150MB}\n```")
    assert not verdict.passed and verdict.details["memory_cgroup"] is True, verdict
    kills = verdict.details["memory_kills"]
    assert kills >= 1, verdict.details
    first, _, rest = verdict.feedback.partition("\n\n")
    assert first.endswith("of your program " + ("was" if kills == 1 else "were")
                          + " killed at the memory limit (256 MB)."), verdict.feedback  # fmt: skip
    assert rest.startswith("Wrong Answer"), verdict.feedback
    quiet = v.verify("```python\nprint(0)\n```")  # nothing killed: no such line
    assert quiet.details["memory_kills"] == 0 and "memory limit" not in quiet.feedback


# Every open descriptor of the process that runs this, with whether an exec'd program would
# inherit it. fstat opens nothing, so the listing does not see itself.
LIST_FDS = """
import os
def open_fds():
    found = []
    for fd in range(1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append((fd, os.get_inheritable(fd)))
    return found
"""
STDIO = [(0, True), (1, True), (2, True)]
REPORTS = (3, False)  # the result channel, which the harness reports on after the code
TALKED_TO = [REPORTS, (4, False), (64, False), (65, False)]  # + messages, copies of fds 1, 2


def test_descriptors_a_run_holds(sandbox):
    """A run holds only the descriptors docs/verifiers.md lists for its harness: one-shot runs
    (a stdin program, verify()) have stdio and the result channel; runs with tests following
    one another also the message channel and copies of fds 1 and 2 (to restore them between
    tests). Only stdio reaches an exec'd program."""
    r, _ = run(sandbox, LIST_FDS + "print(open_fds())")
    assert r.status == "ok" and r.stdout == f"{[*STDIO, REPORTS]}\n", r
    code = LIST_FDS + "def verify(data):\n    return False, repr(open_fds())"
    r = sandbox.run(Job(code=code, harness="verify", data=""))
    assert r.result.get("value") == [False, repr([*STDIO, REPORTS])], r
    fn = "```python\n" + LIST_FDS + "def f(x):\n    return open_fds()\n```"
    talked_to = repr(STDIO + TALKED_TO)
    stdin = parse_verifier({"kind": "tests", "tests": [{"input": "", "output": "-"}]})
    verdict = stdin.build(sandbox=sandbox).verify(fn.replace("def f", "print(open_fds())\ndef f"))
    assert verdict.details["tests"][0]["actual"].strip() == talked_to, verdict
    call = {"kind": "tests", "mode": "functional", "fn_name": "f"}
    spec = parse_verifier({**call, "tests": [{"input": "1", "output": "0"}]})
    verdict = spec.build(sandbox=sandbox).verify(fn)
    assert verdict.details["tests"][0]["actual"] == talked_to, verdict
    # assert tests: the solution's process and the test code's
    test = LIST_FDS + "assert False, (f(1), open_fds())"
    spec = parse_verifier({"kind": "tests", "mode": "assert", "tests": [test]})
    verdict = spec.build(sandbox=sandbox).verify(fn)
    assert f"AssertionError: ({talked_to}, {talked_to})" in verdict.feedback, verdict


def test_sandbox_python_has_livecodebench_imports(sandbox):
    if not PROJECT_SANDBOX_PYTHON.exists() and "SDPO_SANDBOX_PYTHON" not in os.environ:
        pytest.fail("the sandbox's python environment is not built: run `make setup`")
    r, _ = run(
        sandbox,
        "import numpy, sortedcontainers\nprint(numpy.arange(4).sum(), "
        "list(sortedcontainers.SortedList([3, 1, 2])))",
    )
    assert r.status == "ok" and r.stdout == "6 [1, 2, 3]\n", r


def test_without_cgroup_memory_is_limited_per_process():
    """The documented fallback (no writable cgroup, or SDPO_SANDBOX_CGROUP=off)."""
    settings = SandboxSettings(slots=1, cgroup="off", uid_base=63200)
    with Sandbox(settings) as sb:
        assert sb.run(Job(code="pass")).status == "ok"
        assert all(slot.cgroup is None for slot in sb._slots)
        r, _ = run(sb, "a = []\nwhile True:\n    a.append(bytearray(10**7))", memory_mb=256)
        assert r.status == "memory", r
        r, _ = run(sb, "import numpy\nprint(numpy.zeros(10**6).sum())", memory_mb=256)
        assert r.status in ("ok", "error") and "MemoryError" not in r.stderr, r
        # verdicts say no cgroup held the run (only per-process limits)
        spec = {"kind": "tests", "tests": [{"input": "", "output": "1"}]}
        verdict = parse_verifier(spec).build(sandbox=sb).verify("print(1)")
        assert verdict.passed and verdict.details["memory_cgroup"] is False, verdict


def test_sandbox_python_under_tmp(tmp_path):
    """A checkout under /tmp (so its sandbox environment too): every run's private /tmp must not
    hide the interpreter's packages, nor collide with the root's own /tmp."""
    env = tmp_path / "sandbox-env"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(env)], check=True)
    site = next(env.glob("lib/python3*/site-packages"))
    (site / "sdpo_probe_mod.py").write_text("VALUE = 41 + 1\n")
    for p in [env, *env.parents]:
        if p != Path("/"):
            p.chmod(p.stat().st_mode | 0o055)  # readable by the slot uid, as a checkout is
    # ... also when the environment is reached through a symlink (a worktree's environment
    # linking to its main checkout's): the link becomes a link in the minimal root
    (tmp_path / "linked-env").symlink_to(env)
    for python in (env / "bin/python3", tmp_path / "linked-env/bin/python3"):
        settings = SandboxSettings(slots=1, python=str(python), uid_base=63300)
        with Sandbox(settings) as sb:
            for _ in range(2):  # the second run gets a fresh /tmp with the packages bound again
                code = "import sdpo_probe_mod, os\nprint(sdpo_probe_mod.VALUE)\n"
                code += "open('/tmp/mine', 'x').write('x')\nprint(sorted(os.listdir('/tmp')))"
                r, _ = run(sb, code)
                assert r.status == "ok", r
                assert r.stdout.splitlines()[0] == "42", r
                assert "mine" in r.stdout, r


def test_assert_tests_with_one_slot():
    """SDPO_SANDBOX_SLOTS=1: assert tests need two processes at once (the solution's, the test
    code's), which run in turn; a second slot starts when they first need it, so such a
    problem is graded (it raised SandboxError, ending the run as failed) and runs stay one
    at a time."""
    spec = {"kind": "tests", "mode": "assert", "tests": ["assert add(2, 3) == 5"], "timeout_s": 3}
    with Sandbox(SandboxSettings(slots=1, uid_base=63400)) as sb:
        v = build_verifier(spec)
        v._sandbox = sb
        right, wrong = "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n"
        assert [r.passed for r in v.verify_batch([right, wrong, right])] == [True, False, True]
        assert len(sb._slots) == 2 and sb._pool._max_workers == 1
