"""`sdpo solve` as a user runs it: a real subprocess on the bundled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SDPO = [sys.executable, "-m", "sdpo_cli.main"]
GOOD = {"prompt": "q", "verifier": {"kind": "table", "cases": {"a": "1"}}}


def sdpo(
    *args: str, cwd: Path = REPO, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SDPO, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env} if env else None,
    )


def test_solve_easy_example_json(tmp_path: Path, toy_model_dir: Path) -> None:
    proc = sdpo(
        "solve",
        "--model",
        str(toy_model_dir),
        "examples/toy_easy.json",
        "--json",
        "--checkpoint-dir",
        str(tmp_path / "run"),
        "--seed",  # an override on top of the file's sdpo block
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["solved"] is True
    assert summary["attempts"] >= summary["first_pass_attempt"] >= 1
    assert summary["solution"] and summary["seconds"] > 0
    assert "passed" in proc.stderr or "attempts" in proc.stderr  # progress went to stderr


def test_solve_a_score_objective_names_the_best_attempts_adapter(
    tmp_path: Path, toy_model_dir: Path
) -> None:
    from sdpo_core.toy import make_problem

    problem = {**make_problem(9001, 4, max_attempts=40), "objective": {"maximize": True}}
    problem["sdpo"]["samples_per_step"] = 8  # its best attempt came from adapter v1 (measured)
    (tmp_path / "p.json").write_text(json.dumps(problem))
    run = tmp_path / "run"
    proc = sdpo(
        "solve", "--model", str(toy_model_dir), str(tmp_path / "p.json"), "--json",
        "--checkpoint-dir", str(run),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["best_adapter_dir"] == str(run / "best_adapter")
    info = json.loads((run / "best_adapter" / "best.json").read_text())
    assert info["attempt"] == summary["best_attempt"] and info["adapter_version"] == 1
    assert (run / "best_adapter" / "adapter_config.json").is_file()
    assert f"best attempt's adapter (v1): {run / 'best_adapter'}" in proc.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"verifier": {"kind": "table", "cases": {"a": "1"}}}', "prompt"),
        ('{"prompt": "q", "verifier": {"kind": "nope"}}', "verifier.kind"),
        ('{"prompt": "q", "verifier": {"kind": "table", "cases": {}}}', "verifier.cases"),
        (json.dumps({**GOOD, "sdpo": {"lr": -1}}), "sdpo.lr"),
        (json.dumps({**GOOD, "budget": {"max_attempts": 0}}), "budget.max_attempts"),
        (json.dumps({**GOOD, "colour": 1}), "colour"),
    ],
)
def test_bad_problem_files_name_the_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "problem.json"
    path.write_text(content)
    proc = sdpo("solve", str(path))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = sdpo("solve", str(tmp_path / "absent.json"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    proc = sdpo("solve", "examples/toy_easy.json", "--model", str(tmp_path))
    assert proc.returncode == 2
    assert f"no Hugging Face model at {tmp_path}" in proc.stderr and "Traceback" not in proc.stderr


def test_the_user_sees_progress_and_the_result_only(tmp_path: Path, toy_model_dir: Path) -> None:
    """No library warnings or progress bars (transformers' FutureWarning, "Loading weights",
    "Writing model shards") unless --verbose asks for them."""
    common = ["solve", "--model", str(toy_model_dir), "examples/toy_easy.json"]
    quiet = sdpo(*common, "--checkpoint-dir", str(tmp_path / "a"))
    assert quiet.returncode == 0, quiet.stderr
    for noise in ("Warning", "warnings.warn", "Loading weights", "Writing", "it/s"):
        assert noise not in quiet.stderr, quiet.stderr
    assert "attempts" in quiet.stderr  # the progress display
    assert "CPU threads: " in quiet.stderr and "free cores" in quiet.stderr
    assert quiet.stdout.startswith("solved at attempt")
    loud = sdpo(
        *common, "--checkpoint-dir", str(tmp_path / "b"), "--verbose",
        env={"SDPO_CPU_THREADS": "1"},
    )  # fmt: skip
    assert loud.returncode == 0 and "Loading weights" in loud.stderr
    assert "CPU threads: 1 (SDPO_CPU_THREADS)" in loud.stderr
