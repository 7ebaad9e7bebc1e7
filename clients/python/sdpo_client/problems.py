"""Build problem specs (the JSON `POST /v1/problems` accepts) without writing JSON by hand.

Every builder returns a plain dict: {"prompt", "verifier", "budget"?, "sdpo"?, "model"?,
"metadata"?}. The LiveCodeBench and HumanEval converters are the server's own
(sdpo_client/records.py is the same file as sdpo_core/records.py).

    from sdpo_client import problems
    p = problems.from_io_tests("Read two ints, print their sum.", [("1 2", "3"), ("5 5", "10")])
    p = problems.from_verifier_function("Say three words.", my_verify, max_attempts=64)
"""

from __future__ import annotations

import inspect
import json
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from sdpo_client import records


def problem(
    prompt: str,
    verifier: Mapping[str, Any],
    *,
    max_attempts: int | None = None,
    max_seconds: float | None = None,
    method: str | None = None,
    objective: Mapping[str, Any] | None = None,
    sdpo: Mapping[str, Any] | None = None,
    model: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A problem dict; omitted options keep the server's defaults."""
    if not prompt or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    out: dict[str, Any] = {"prompt": prompt, "verifier": dict(verifier)}
    budget: dict[str, Any] = {}
    if max_attempts is not None:
        budget["max_attempts"] = int(max_attempts)
    if max_seconds is not None:
        budget["max_seconds"] = float(max_seconds)
    if budget:
        out["budget"] = budget
    if method is not None:
        out["method"] = method  # sdpo, best_of_k or multi_turn
    if objective is not None:  # {"stop": "pass"}, {"target_score": x} or {"maximize": True}
        out["objective"] = dict(objective)
    if sdpo:
        out["sdpo"] = dict(sdpo)
    if model is not None:
        out["model"] = model
    if metadata:
        out["metadata"] = dict(metadata)
    return out


def _with_options(base: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    built = problem(base["prompt"], base["verifier"], **options)
    if base.get("metadata"):
        built["metadata"] = {**base["metadata"], **built.get("metadata", {})}
    return built


# -------------------------------------------------------------------- table (toy)
def from_table(
    prompt: str, cases: Mapping[str, Any], *, max_failures: int = 2, **options: Any
) -> dict[str, Any]:
    """The toy world's `table` kind: the answer is `key=value` pairs checked against `cases`."""
    if not cases:
        raise ValueError("cases must not be empty")
    verifier = {"kind": "table", "cases": {str(k): str(v) for k, v in cases.items()}}
    verifier["max_failures"] = max_failures
    return problem(prompt, verifier, **options)


# -------------------------------------------------------------------- answer
def from_answer(
    prompt: str,
    expected: str | float,
    *,
    match: Literal["exact", "numeric", "regex", "math"] = "exact",
    **options: Any,
) -> dict[str, Any]:
    """A final-answer check (`\\boxed{}`, `Answer:` or the last line) against `expected`."""
    return problem(prompt, {"kind": "answer", "expected": expected, "match": match}, **options)


# -------------------------------------------------------------------- tests
def _io_test(test: Any) -> dict[str, str]:
    if isinstance(test, Mapping):
        return {"input": str(test["input"]), "output": str(test["output"])}
    given, expected = test
    return {"input": str(given), "output": str(expected)}


def from_io_tests(
    prompt: str,
    tests: Iterable[tuple[str, str] | Mapping[str, str]],
    *,
    mode: Literal["stdin", "functional"] = "stdin",
    fn_name: str | None = None,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Code checked on input/output tests: `(stdin, expected stdout)` pairs, or in
    `functional` mode JSON arguments (one per line) and a JSON result, calling `fn_name`."""
    cases = [_io_test(t) for t in tests]
    if not cases:
        raise ValueError("at least one test is required")
    verifier: dict[str, Any] = {"kind": "tests", "mode": mode, "tests": cases}
    if mode == "functional":
        if not fn_name:
            raise ValueError("functional mode needs fn_name")
        verifier["fn_name"] = fn_name
    verifier.update(records.run_limits(timeout_s, memory_mb))
    return problem(prompt, verifier, **options)


def from_asserts(
    prompt: str,
    test: str,
    *,
    entry_point: str | None = None,
    prefix: str | None = None,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """HumanEval/MBPP style: `prefix`, the solution, then `test` (calling `check(entry_point)`
    when it defines `check`) must run without an exception."""
    verifier: dict[str, Any] = {"kind": "tests", "mode": "assert", "test": test}
    if entry_point:
        verifier["entry_point"] = entry_point
    if prefix:
        verifier["prefix"] = prefix
    verifier.update(records.run_limits(timeout_s, memory_mb))
    return problem(prompt, verifier, **options)


# -------------------------------------------------------------------- python verifier
def verifier_source(fn: Callable[..., Any] | str) -> str:
    """Source that defines `verify(response)` from a function (via inspect.getsource) or a
    string. The function must be self-contained (imports inside it): only its own source is
    sent, and it runs in the service's sandbox."""
    if isinstance(fn, str):
        source, name = textwrap.dedent(fn), "verify"
    else:
        if fn.__name__ == "<lambda>":
            raise ValueError("a lambda has no usable source; define a function")
        source, name = textwrap.dedent(inspect.getsource(fn)), fn.__name__
        lines = source.splitlines()
        while lines and lines[0].lstrip().startswith("@"):  # decorators do not travel
            lines.pop(0)
        source = "\n".join(lines) + "\n"
    compile(source, "<verifier>", "exec")  # fail here, not on the server
    if name != "verify":
        source += f"\n\nverify = {name}\n"
    return source


def from_verifier_function(
    prompt: str,
    fn: Callable[[str], Any] | str,
    *,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """A `python` verifier from your own function `f(response) -> bool | (bool, feedback)`."""
    verifier = {
        "kind": "python",
        "source": verifier_source(fn),
        **records.run_limits(timeout_s, memory_mb),
    }
    return problem(prompt, verifier, **options)


# -------------------------------------------------------------------- benchmark records
def from_livecodebench(
    record: Mapping[str, Any],
    *,
    include_private: bool = True,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """A LiveCodeBench `code_generation_lite` record, with LiveCodeBench's prompt wording
    (the service's own converter, sdpo_client/records.py)."""
    base = records.livecodebench_problem(
        record, include_private=include_private, timeout_s=timeout_s, memory_mb=memory_mb
    )
    return _with_options(base, options) if options else base


def from_humaneval(
    record: Mapping[str, Any],
    *,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """A HumanEval record (prompt, test, entry_point) as an `assert` verifier."""
    base = records.humaneval_problem(record, timeout_s=timeout_s, memory_mb=memory_mb)
    return _with_options(base, options) if options else base


def load(path: str) -> dict[str, Any]:
    """A problem JSON file as a dict."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a problem must be a JSON object")
    return data


__all__: Sequence[str] = [
    "from_answer",
    "from_asserts",
    "from_humaneval",
    "from_io_tests",
    "from_livecodebench",
    "from_table",
    "from_verifier_function",
    "load",
    "problem",
    "verifier_source",
]
