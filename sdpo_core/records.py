"""Turn records of public code benchmarks into problem dicts {"prompt": ..., "verifier": ...}.

Standard library only: the service (sdpo_core/records.py, validated by
sdpo_core/verifiers/converters.py) and the SDK (sdpo_client/records.py) use this same file;
tests/test_contract.py checks the copies are identical.

livecodebench_problem: a LiveCodeBench `code_generation_lite` record. Its test lists are JSON
strings; newer releases store `private_test_cases` as base64(zlib(pickle(json string))). That
pickle is read with an unpickler that admits no classes at all, so it can only yield plain
strings and containers, never run code.
humaneval_problem: a HumanEval record (prompt, test, entry_point); MBPP-style records work
too when their asserts are joined into `test`.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from collections.abc import Mapping
from typing import Any

LCB_STDIN_FORMAT = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not "
    "directly test on the sample inputs). Enclose your code within delimiters as follows. "
    "Ensure that when the python program runs, it reads the inputs, runs the algorithm and "
    "writes output to STDOUT.\n```python\n# YOUR CODE HERE\n```"
)
LCB_FUNCTIONAL_FORMAT = (
    "You will use the following starter code to write the solution to the problem and "
    "enclose your code within delimiters.\n```python\n{starter_code}\n```"
)
HUMANEVAL_FORMAT = (
    "Complete the following Python function. Give the whole function (with any imports it "
    "needs) in one ```python code block.\n\n```python\n{prompt}```"
)


class _NoClassesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _test_list(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, list):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return []
    try:
        return json.loads(raw)
    except ValueError:
        pass
    data = _NoClassesUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(raw)))).load()
    return json.loads(data) if isinstance(data, str | bytes) else data


def run_limits(timeout_s: float | None, memory_mb: int | None) -> dict[str, Any]:
    """The limits given; one left None takes the verifier kind's default (the server's)."""
    given = {"timeout_s": timeout_s, "memory_mb": memory_mb}
    return {k: v for k, v in given.items() if v is not None}


def livecodebench_problem(
    record: Mapping[str, Any],
    *,
    include_private: bool = True,
    hide_private: bool = True,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
) -> dict[str, Any]:
    """A problem dict from a LiveCodeBench record (public + private tests). Private tests are
    held out by default: they count for the verdict, feedback never shows them."""
    tests = _test_list(record.get("public_test_cases"))
    n_public = len(tests)
    if include_private:
        tests += _test_list(record.get("private_test_cases"))
    if not tests:
        raise ValueError("the record has no test cases")
    metadata = record.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata) if metadata.strip() else {}
    functional = tests[0].get("testtype") == "functional"
    verifier: dict[str, Any] = {
        "kind": "tests",
        "mode": "functional" if functional else "stdin",
        "tests": [
            {"input": t["input"], "output": t["output"]}
            | ({"hidden": True} if hide_private and i >= n_public else {})
            for i, t in enumerate(tests)
        ],
        **run_limits(timeout_s, memory_mb),
    }
    question = record.get("question_content", "").strip()
    if functional:
        verifier["fn_name"] = metadata["func_name"]
        starter = record.get("starter_code", "").rstrip()
        prompt = question + "\n\n" + LCB_FUNCTIONAL_FORMAT.format(starter_code=starter)
    else:
        prompt = question + "\n\n" + LCB_STDIN_FORMAT
    meta = {k: record[k] for k in ("question_id", "question_title", "platform") if k in record}
    return {"prompt": prompt, "verifier": verifier, "metadata": {"source": "livecodebench", **meta}}


def humaneval_problem(
    record: Mapping[str, Any], *, timeout_s: float | None = None, memory_mb: int | None = None
) -> dict[str, Any]:
    """A problem dict from a HumanEval record: assert mode, the record's prompt as prefix."""
    verifier = {
        "kind": "tests",
        "mode": "assert",
        "test": record["test"],
        "entry_point": record["entry_point"],
        "prefix": record["prompt"],
        **run_limits(timeout_s, memory_mb),
    }
    meta = {"source": "humaneval", "task_id": record.get("task_id")}
    return {
        "prompt": HUMANEVAL_FORMAT.format(prompt=record["prompt"]),
        "verifier": verifier,
        "metadata": meta,
    }
