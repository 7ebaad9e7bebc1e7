"""Every example problem in examples/: a valid problem file that POST /v1/problems accepts,
whose verifier passes a correct answer and fails a wrong one with feedback; run by the solve
loop on a tiny random model, its verifier's feedback reaches the self-teacher (samples with
feedback are not masked out of the SDPO step); `sdpo solve` runs it to the end of its budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sdpo_core.contract import AttemptPayload, StepPayload
from sdpo_core.problem import load_problem, parse_problem
from sdpo_core.solve import solve
from tests.conftest import REPO
from tests.test_cli import sdpo

pytest_plugins = ["service_fixtures"]

EXAMPLES = sorted(
    p.stem for p in (REPO / "examples").glob("*.json") if not p.stem.startswith("toy")
)
CORRECT = {
    "lcb_stdin": "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
    "lcb_functional": (
        "```python\nclass Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
        "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
        "                return [seen[target - x], i]\n            seen[x] = i\n```"
    ),
    "humaneval_assert": (
        "```python\ndef running_max(numbers):\n    out = []\n    for x in numbers:\n"
        "        out.append(x if not out else max(out[-1], x))\n    return out\n```"
    ),
    "math_answer": "1/2 + 1/3 = 3/6 + 2/6, so the answer is \\boxed{\\frac{5}{6}}.",
    "python_verifier": "An 11-letter palindrome with a q:\nabcdeqedcba",
}
WRONG_FEEDBACK = {  # a wrong answer's feedback starts with these words
    "lcb_stdin": "Wrong Answer",
    "lcb_functional": "Wrong Answer",
    "humaneval_assert": "Wrong Answer",
    "math_answer": "Wrong Answer",
    "python_verifier": "'abcdeqedcbb' is not a palindrome",
}
WRONG = {
    "lcb_stdin": "```python\na, b = map(int, input().split())\nprint(a - b)\n```",
    "lcb_functional": (
        "```python\nclass Solution:\n    def twoSum(self, nums, target):\n"
        "        return [0, 1]\n```"
    ),
    "humaneval_assert": "```python\ndef running_max(numbers):\n    return list(numbers)\n```",
    "math_answer": "\\boxed{\\frac{2}{5}}",
    "python_verifier": "abcdeqedcbb",
}


def test_there_is_an_example_of_every_verifier_kind() -> None:
    kinds = set()
    for name in EXAMPLES:
        v = load_problem(REPO / "examples" / f"{name}.json").verifier
        kinds.add((v.kind, getattr(v, "mode", None)))
    assert kinds == {
        ("tests", "stdin"),
        ("tests", "functional"),
        ("tests", "assert"),
        ("answer", None),
        ("python", None),
    }
    assert set(CORRECT) == set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_verifier_passes_the_answer_and_explains_a_wrong_one(name: str) -> None:
    verifier = load_problem(REPO / "examples" / f"{name}.json").verifier.build()
    good = verifier.verify(CORRECT[name])
    assert good.passed, good.feedback
    bad = verifier.verify(WRONG[name])
    assert not bad.passed and bad.feedback.startswith(WRONG_FEEDBACK[name]), bad.feedback


def test_the_api_accepts_every_example(api_server: Any) -> None:
    """As they are, under the server's default limits (each file is what a user would POST)."""
    with api_server.client() as client:
        for path in sorted((REPO / "examples").glob("*.json")):
            data = json.loads(path.read_text())
            r = client.post("/v1/problems", json=data)
            assert r.status_code == 201, (path.name, r.text)
            spec = client.get(f"/v1/problems/{r.json()['id']}").json()["spec"]
            assert spec["verifier"]["kind"] == data["verifier"]["kind"], path.name
            assert client.post(f"/v1/problems/{r.json()['id']}/cancel").status_code == 200


def small(name: str, attempts: int) -> dict[str, Any]:
    """The example with a tiny budget: `attempts` samples in steps of 4, 24 tokens each."""
    data = json.loads((REPO / "examples" / f"{name}.json").read_text())
    data["budget"] = {"max_attempts": attempts, "max_seconds": 300}
    data["sdpo"] = {**data["sdpo"], "max_new_tokens": 24, "samples_per_step": 4}
    return data


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from sdpo_core.toy.families import build_tiny_model

    torch.manual_seed(0)
    return build_tiny_model("qwen3", tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_runtime(tiny_model: Path):
    from sdpo_core.runtime import load_runtime

    runtime = load_runtime(tiny_model, engine="hf", device="cpu")
    yield runtime
    runtime.close()


@pytest.mark.parametrize("name", EXAMPLES)
def test_sdpo_solve_runs_the_example(name: str, tiny_model: Path, tmp_path: Path) -> None:
    """Through the real CLI: 8 attempts of random text in two batches, an SDPO step on the
    first one's feedback (the budget ends with the second)."""
    problem = tmp_path / f"{name}.json"
    problem.write_text(json.dumps(small(name, attempts=8)))
    args = ["solve", str(problem), "--model", str(tiny_model), "--device", "cpu", "--json"]
    proc = sdpo(*args, "--checkpoint-dir", str(tmp_path / "run"), env={"SDPO_CPU_THREADS": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert (result["status"], result["attempts"], result["steps"]) == ("exhausted", 8, 1), result


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_and_its_feedback_reaches_the_teacher(
    name: str, tiny_runtime, tmp_path: Path
) -> None:
    data = small(name, attempts=8)
    events: list = []
    result = solve(
        parse_problem(data), tiny_runtime, on_event=events.append, checkpoint_dir=tmp_path
    )
    assert result.status == "exhausted" and result.attempts == 8, result
    feedback = [e.verdict.feedback for e in events if isinstance(e, AttemptPayload)]
    assert len(feedback) == 8 and all(feedback), feedback  # random text: every attempt fails
    steps = [e for e in events if isinstance(e, StepPayload)]
    assert steps and steps[0].metrics["masked_fraction"] < 1.0  # the teacher saw the feedback
