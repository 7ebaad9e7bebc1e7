"""The README's examples run as written."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.S)


def test_readme_names_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    first = sh_blocks()[0]
    assert "make solve" in first and "make test" in first
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_service_example_runs(tmp_path: Path) -> None:
    """The `sdpo serve` + curl block, verbatim except for the port, in a fresh directory."""
    block = next(b for b in sh_blocks() if "sdpo serve &" in b)
    port = str(_free_port())
    script = block.replace("8000", port).replace(".venv/bin/sdpo", str(REPO / ".venv/bin/sdpo"))
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    env = {**os.environ, "SDPO_PORT": port}
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", "set -m\n" + script + "\necho status-done"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "event: solved" in out and '"solved"' in out, out[-3000:]
    assert (tmp_path / "adapter.tar.gz").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_docs_name_only_files_in_the_repository() -> None:
    """Relative links in README.md and docs/ resolve, and nothing cites a design file
    outside the repository (what the code needs is in docs/design.md)."""
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for path in texts:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).exists(), f"{path.name}: link to missing {target}"
    sources = [
        *REPO.glob("sdpo_core/**/*.py"),
        *REPO.glob("service/**/*.py"),
        *REPO.glob("sdpo_cli/*.py"),
        *REPO.glob("tests/*.py"),
        *texts,
    ]
    for path in sources:
        assert "DESIGN" + ".md" not in path.read_text(), path
