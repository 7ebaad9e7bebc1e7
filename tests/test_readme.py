"""The README's examples, and docs/api.md's curl session, run as written."""

from __future__ import annotations

import json
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


def run_script(script: str, cwd: Path, port: str) -> str:
    """Run a shell session (bash -euo pipefail, job control for `kill %1`) in `cwd`; its
    output, after asserting that it succeeded."""
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", "set -m\n" + script + "\necho status-done"],
        cwd=cwd,
        env={**os.environ, "SDPO_PORT": port},
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
    return out


@pytest.mark.slow
def test_readme_service_example_runs(tmp_path: Path) -> None:
    """The `sdpo serve` + curl block, verbatim except for the port, in a fresh directory."""
    block = next(b for b in sh_blocks() if "sdpo serve &" in b)
    port = str(_free_port())
    script = block.replace("8000", port).replace(".venv/bin/sdpo", str(REPO / ".venv/bin/sdpo"))
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    out = run_script(script, tmp_path, port)
    assert "event: solved" in out and '"solved"' in out, out[-3000:]
    assert (tmp_path / "adapter.tar.gz").exists()


@pytest.mark.slow
def test_api_doc_curl_session_runs_and_prints_what_it_shows(tmp_path: Path) -> None:
    """docs/api.md's curl block against a fresh `sdpo serve` on the bundled toy model,
    verbatim except for the port (and a copy of the submit response kept to compare), then
    its peft block on the downloaded adapter. What the page shows is what came back: the
    submit response, the stream's first event, the adapter's files."""
    doc = (REPO / "docs" / "api.md").read_text()
    block = re.search(r"## curl\n.*?```sh\n(.*?)```", doc, re.S)[1]
    response = re.search(r"# the response: (\{.*?),\.\.\.\}", block)
    assert response, "the page shows the submit response"
    shown = response[1] + "}"
    block = block.replace("| jq -r .id)", "| tee submitted.json | jq -r .id)", 1)
    port = str(_free_port())
    script = (
        f"{REPO / '.venv/bin/sdpo'} serve &\n"
        "until curl -sf http://127.0.0.1:8000/readyz >/dev/null; do sleep 1; done\n"
        "KEY=$(cat sdpo-data/api-key)\n" + block + "kill %1\n"
    ).replace("8000", port)
    out = run_script(script, tmp_path, port)

    submitted = json.loads((tmp_path / "submitted.json").read_text())
    claimed = json.loads(shown.replace("prb_…", "prb_"))
    assert submitted["id"].startswith(claimed.pop("id")), submitted
    assert {k: submitted[k] for k in claimed} == claimed, (submitted, shown)
    first_event = re.search(r"# (id: \d+-\d+)\n# (event: .*)\n# (data: .*)\n", block)
    assert first_event, "the page shows the stream's first event"
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("id: "))
    assert re.fullmatch(r"id: \d+-\d+", lines[start]), lines[start]
    assert lines[start + 1 : start + 3] == list(first_event.groups()[1:]), out[-3000:]
    assert "event: solved" in out, out[-3000:]
    files = {p.name for p in (tmp_path / "adapter").iterdir()}  # what `ls adapter/` listed
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files, out[-3000:]

    peft = re.search(r"Load the adapter with peft:\n\n```python\n(.*?)```", doc, re.S)[1]
    python = str(REPO / ".venv/bin/python")
    run = subprocess.run(
        [python, "-c", peft + "print(type(model).__name__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "PeftModelForCausalLM", run.stderr


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
