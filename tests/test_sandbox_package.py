"""The sandbox is a package of its own: it imports nothing of SDPO, its callers use only its
public API, the files the sandbox python runs are stdlib only, and an installed (not editable)
copy starts its fork server and runs code. Real processes, no mocks."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import sdpo_sandbox

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sdpo_sandbox"
# Run by the sandbox python (`-I`, an environment of its own): loaded by path, never imported.
SERVER_FILES = ("_forkserver.py", "_harness.py", "_seccomp.py")


def imported(path: Path) -> list[tuple[str, int]]:
    """(module, level) of every import in `path`, nested ones included."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level))
    return out


def test_sandbox_imports_nothing_of_sdpo() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 5
    for path in files:
        for name, level in imported(path):
            top = name.split(".")[0]
            assert level == 0, f"{path.name}: relative import of {name!r}"
            assert top not in {"sdpo_core", "service", "sdpo_cli", "sdpo_client"}, (path, name)


def test_fork_server_files_are_stdlib_only() -> None:
    for name in SERVER_FILES:
        for module, _ in imported(PACKAGE / name):
            top = module.split(".")[0]
            assert top in sys.stdlib_module_names or top == "__future__", (name, module)


def test_callers_use_only_the_public_api() -> None:
    """The verifier kinds, the service and the benchmarks import `sdpo_sandbox` itself, and
    only names in its `__all__`."""
    public = set(sdpo_sandbox.__all__)
    assert public <= set(dir(sdpo_sandbox))
    seen = 0
    for top in ("sdpo_core", "service", "sdpo_cli", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    for a in node.names:
                        assert not a.name.startswith("sdpo_sandbox."), (path, a.name)
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "sdpo_sandbox"
                ):
                    assert node.module == "sdpo_sandbox", (path, node.module)
                    names = {a.name for a in node.names}
                    assert names <= public, (path, names - public)
                    seen += 1
    assert seen >= 4  # kinds/tests.py, kinds/python.py, service/settings.py, worker.py, ...


def test_installed_package_runs_code(tmp_path: Path) -> None:
    """From a wheel, unpacked as pip installs it (no checkout around it): the fork server, the
    harness and the seccomp filter are found beside the installed modules. Built from what the
    images copy (pyproject.toml, README.md, the packages it names), outside the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in find["packages"]["find"]["include"]:
        name = package.rstrip("*")
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sdpo_service-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {f"sdpo_sandbox/{n}" for n in SERVER_FILES} <= names
        zf.extractall(site)
    mode = "namespaces" if os.geteuid() == 0 else "unsafe-local"
    code = textwrap.dedent(
        f"""
        import sys
        import sdpo_sandbox
        assert sdpo_sandbox.__file__.startswith({str(site)!r}), sdpo_sandbox.__file__
        from sdpo_sandbox import Job, Sandbox, SandboxSettings
        with Sandbox(SandboxSettings(slots=1, mode={mode!r}, python=sys.argv[1])) as sb:
            r = sb.run(Job(code="print(sum(map(int, input().split())))", stdin="2 3"))
            assert (r.status, r.stdout, r.mode) == ("ok", "5\\n", {mode!r}), r
            v = sb.run(Job(code="def verify(d):\\n    return d == 'x'", harness="verify",
                           data="x"))
            assert (v.status, v.result.get("value")) == ("ok", True), v
        print("ran")
        """
    )
    python = sdpo_sandbox.SandboxSettings().python
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run(
        [sys.executable, "-c", code, python],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "ran", r.stdout + r.stderr[-3000:]
