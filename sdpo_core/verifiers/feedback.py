"""Feedback text in LiveCodeBench's wording, which models have seen during training.

One block per reported test, e.g.

    Wrong Answer
    Input: 1 2
    Expected Output: 3
    Your Output: 4

The `table` verifier's blocks use the same wording.
"""

from __future__ import annotations

import re
import signal
from typing import Any

from sdpo_core.verifiers.base import truncate

FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.S)
OPEN_FENCE = re.compile(r"```[^\n`]*\n(.*)\Z", re.S)


def extract_code_livecodebench(response: str) -> str:
    """LiveCodeBench's extraction (chat models): the lines between the last two lines that
    contain a fence, and nothing when there are fewer than two."""
    lines = response.split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    if len(fences) < 2:
        return ""
    return "\n".join(lines[fences[-2] + 1 : fences[-1]])


def extract_code(response: str) -> str:
    """The last fenced code block (an unclosed final one counts), else the whole response."""
    blocks = list(FENCE.finditer(response))
    unclosed = OPEN_FENCE.search(response, blocks[-1].end() if blocks else 0)
    if unclosed:
        return unclosed.group(1)
    return blocks[-1].group(1) if blocks else response


TITLES = {
    "wrong_answer": "Wrong Answer",
    "timeout": "Time Limit Exceeded",
    "runtime_error": "Runtime Error",
    "compile_error": "Compilation Error",
    "memory": "Memory Limit Exceeded",
    "output_limit": "Output Limit Exceeded",
}


def traceback_tail(stderr: str, lines: int = 8) -> str:
    text = stderr.rstrip("\n")
    start = text.rfind("Traceback (most recent call last):")
    if start >= 0:
        text = text[start:]
    return "\n".join(text.splitlines()[-lines:])


def program_stderr(stderr: str, lines: int = 8) -> str:
    """The end of the program's stderr, fenced and labelled as the program's, so nothing in it
    reads as the grader's words (a fence inside it is broken up)."""
    tail = traceback_tail(stderr, lines).replace("```", "`\u200b``")
    return f"The program's stderr (last lines):\n```\n{tail}\n```"


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def block(test: dict[str, Any], field_chars: int) -> str:
    """One test's feedback block. `test` is an entry of details["tests"]."""
    status = test["status"]
    lines = [TITLES[status]]
    if status == "compile_error":
        lines.append(truncate(test.get("error", ""), field_chars))
        return "\n".join(lines)
    if test.get("hidden"):
        lines.append("(a held-out test: its input and expected output are not shown)")
    actual = test.get("actual") if status == "wrong_answer" else None
    if status == "wrong_answer" and test.get("expected") is not None and not (actual or "").strip():
        actual = "(no output)"
    shown = (
        ("Input: ", test.get("input")),
        ("Expected Output: ", test.get("expected")),
        ("Your Output: ", actual),
        ("First difference: ", test.get("first_diff") or None),
        ("", test.get("error")),
    )
    for label, value in shown:
        if value is not None and (label or value):
            lines.append(label + truncate(value.rstrip("\n"), field_chars))
    return "\n".join(lines)


def summarize(tests: list[dict[str, Any]], max_chars: int) -> str:
    """As the authors' format_test_feedback: the first failing test that crashed (compile or
    runtime error, memory or output limit), else the first timeout, else the two shortest
    wrong answers."""
    failed = [t for t in tests if t["status"] not in ("passed", "skipped")]
    if not failed:
        return ""
    field_chars = max(80, max_chars // 4)
    errors = [t for t in failed if t["status"] not in ("wrong_answer", "timeout")]
    first = errors or [t for t in failed if t["status"] == "timeout"]
    if first:
        text = block(first[0], field_chars)
    else:
        wrong = sorted(
            failed, key=lambda t: len(t.get("input") or "") + len(t.get("expected") or "")
        )
        shown = sorted(wrong[:2], key=lambda t: t["index"])
        text = "\n\n".join(block(t, field_chars) for t in shown)
    return truncate(text, max_chars)


def memory_note(kills: int, memory_mb: int) -> str:
    """The line that tells a program (and its self-teacher) the memory limit killed part of
    it, though the run went on: e.g. a forked child or a multiprocessing worker."""
    if kills <= 0:
        return ""
    who = "A process" if kills == 1 else f"{kills} processes"
    verb = "was" if kills == 1 else "were"
    return f"{who} of your program {verb} killed at the memory limit ({memory_mb} MB)."
