"""Settings come from the environment and a `.env` file, one declaration per variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings
from tests.conftest import REPO


def test_environment_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "CHECKPOINT_DIR", "SDPO_MODELS", "SDPO_MAX_QUEUED", "SDPO_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "REDIS_URL=redis://r:6379/1\nSDPO_MODELS=toy, qwen3-8b\nSDPO_MAX_QUEUED=7\n"
        "SDPO_DATA_DIR=/d\n"
    )
    monkeypatch.setenv("SDPO_MAX_QUEUED", "9")  # the environment wins over .env
    s = Settings.from_env()
    assert s.redis_url == "redis://r:6379/1"
    assert s.models == ["toy", "qwen3-8b"] and s.default_model == "toy"
    assert s.max_queued == 9
    assert s.checkpoint_dir == Path("/d/checkpoints")  # under the data dir unless set
    monkeypatch.setenv("CHECKPOINT_DIR", "/c")
    monkeypatch.setenv("SDPO_HEARTBEAT_SECONDS", "")  # empty = unset
    s = Settings.from_env()
    assert s.checkpoint_dir == Path("/c") and s.heartbeat_seconds == 2.0


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDPO_MAX_QUEUED", "lots")
    with pytest.raises(ValueError, match="max_queued"):
        Settings.from_env()


def test_redis_password_joins_the_url() -> None:
    s = Settings(redis_url="redis://redis:6379/0", redis_password="p@ss/w")
    assert s.redis_url == "redis://:p%40ss%2Fw@redis:6379/0"
    s = Settings(redis_url="redis://:own@redis:6379/0", redis_password="other")
    assert s.redis_url == "redis://:own@redis:6379/0"
    assert Settings(redis_url=None, redis_password="x").redis_url is None


def test_sandbox_settings_nest_under_their_documented_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SDPO_SANDBOX (the mode) and SDPO_SANDBOX_<FIELD>, from the environment or `.env`,
    reach Settings.sandbox; code arguments win over the environment."""
    from sdpo_sandbox import SandboxError, SandboxSettings

    for name in SandboxSettings.env_names().values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SDPO_SANDBOX_NPROC=12\nSDPO_SANDBOX_PRELOAD=json, re\n")
    monkeypatch.setenv("SDPO_SANDBOX", "unsafe-local")
    monkeypatch.setenv("SDPO_SANDBOX_SLOTS", "3")
    s = Settings.from_env().sandbox
    assert (s.mode, s.slots, s.nproc, s.preload) == ("unsafe-local", 3, 12, ("json", "re"))
    assert s.uid_base == 61000 and s.cgroup == "auto"  # the model's defaults
    assert SandboxSettings(slots=1).slots == 1  # an argument wins
    monkeypatch.delenv("SDPO_SANDBOX")
    assert Settings.from_env().sandbox.mode == "namespaces"
    monkeypatch.setenv("SDPO_SANDBOX_SLOTS", "0")
    with pytest.raises(SandboxError, match="SDPO_SANDBOX_SLOTS='0'"):
        Settings.from_env()
    monkeypatch.setenv("SDPO_SANDBOX_SLOTS", "2")
    monkeypatch.setenv("SDPO_SANDBOX", "docker")
    with pytest.raises(ValueError, match=r"SDPO_SANDBOX='docker'.*unsafe-local"):
        Settings.from_env()


def test_the_documented_defaults_are_the_fields_defaults() -> None:
    """The module docstring lists each variable with its default: it states the fields'
    defaults, not a second set of them."""
    import service.settings as module

    doc = module.__doc__ or ""
    checked = 0
    for names, default in re.findall(r"^    ([A-Z_][A-Z_ /]*?) \((.*?)\): ", doc, re.M):
        values = [v.strip() for v in default.split(" / ")]
        for name, value in zip([n.strip() for n in names.split(" / ")], values, strict=False):
            field = name.removeprefix("SDPO_").lower()
            info = Settings.model_fields.get(field)
            assert info is not None, f"{name} is documented but not a setting"
            if value.startswith("("):  # (none), (served): described, not a value
                continue
            want = info.get_default(call_default_factory=True)
            if want is None:  # derived from another setting (CHECKPOINT_DIR: under the data dir)
                want = getattr(Settings(), field)
            if isinstance(want, bool):
                assert value == str(want).lower(), name
            elif isinstance(want, int | float):
                assert float(value) == want, (name, value, want)
            else:
                assert value == str(want) or value.removeprefix("./") == str(want), (name, value)
            checked += 1
    assert checked >= 25, checked


def test_store_defaults_are_the_settings_defaults() -> None:
    import inspect

    from service.store import Store

    params = inspect.signature(Store).parameters
    assert params["retention_s"].default == Settings.model_fields["retention_seconds"].default
    assert params["events_maxlen"].default == Settings.model_fields["events_maxlen"].default


def test_engine_and_thread_settings_are_declared(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read once, here: no engine or entry point reads these from os.environ itself."""
    monkeypatch.setenv("SDPO_CPU_THREADS", "3")
    monkeypatch.setenv("SDPO_VLLM_PYTHON", "/opt/vllm/bin/python")
    monkeypatch.setenv("VLLM_API_KEY", "secret")
    s = Settings.from_env()
    assert (s.cpu_threads, str(s.vllm_python), s.vllm_api_key) == (
        3,
        "/opt/vllm/bin/python",
        "secret",
    )
    monkeypatch.setenv("SDPO_CPU_THREADS", "0")
    with pytest.raises(ValueError, match="cpu_threads"):
        Settings.from_env()
    for package in ("sdpo_core", "service", "sdpo_cli"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            for name in ("SDPO_VLLM_PYTHON", "VLLM_API_KEY", "CHECKPOINT_DIR", "SDPO_CPU_THREADS"):
                assert f'environ.get("{name}")' not in text, (path, name)


def test_cpu_threads_default_to_the_free_cores() -> None:
    from sdpo_core.runtime import cpu_threads

    assert cpu_threads(5) == (5, "SDPO_CPU_THREADS")
    cores = len(os.sched_getaffinity(0))
    n, why = cpu_threads()
    assert 1 <= n <= cores and f"{cores} usable" in why and "SDPO_CPU_THREADS sets it" in why
    n, why = cpu_threads(beside_vllm=True)  # a local vLLM server on the same cores
    assert 1 <= n <= max(1, cores - 1) and "one left to the local vLLM server" in why


def test_cgroup_cpu_limit_of_a_cgroup_v2_tree(tmp_path: Path) -> None:
    """A container's --cpus as cgroup v2 writes it (the least of the cgroup and its
    ancestors), read from a copy of the files' layout; "max" is no limit."""
    from sdpo_core.runtime import cgroup_cpu_limit

    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    root = tmp_path / "fs"
    (root / "kubepods" / "pod1" / "ctr").mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "pod1" / "cpu.max").write_text("250000 100000\n")
    (root / "kubepods" / "pod1" / "ctr" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(proc, root) == 2.5
    (root / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(proc, root) is None
    assert cgroup_cpu_limit(tmp_path / "missing", root) is None


def test_cpu_threads_keep_within_the_cgroup_cpu_limit() -> None:
    """A process in a real cgroup (v1 here) limited to 1.5 CPUs: affinity still shows every
    core; the limit caps the threads and the reason names it."""
    import uuid

    base = Path("/sys/fs/cgroup/cpu")
    if not (base / "cpu.cfs_quota_us").exists() or not os.access(base, os.W_OK):
        pytest.skip("no writable cgroup v1 cpu hierarchy on this host")
    group = base / f"sdpo-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("150000")
        code = (
            "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid()))\n"
            "from sdpo_core.runtime import cgroup_cpu_limit, cpu_threads\n"
            "print(cgroup_cpu_limit()); print(*cpu_threads(), sep='|')"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(group / "cgroup.procs")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.splitlines()
    finally:
        group.rmdir()
    assert out[0] == "1.5", out
    n, why = out[1].split("|")
    assert n == "1" and "cgroup CPU limit 1.5" in why, out


def test_checkpoint_dir_given_or_derived(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHECKPOINT_DIR", raising=False)
    assert not Settings.from_env().checkpoint_dir_given
    monkeypatch.setenv("CHECKPOINT_DIR", "/c")
    s = Settings.from_env()
    assert s.checkpoint_dir_given and s.model_copy(update={"port": 1}).checkpoint_dir_given
