"""The live progress display shared by `sdpo solve` and `sdpo submit --follow`.

It consumes plain event dicts (`kind` plus fields, as the SSE stream carries them), so the
local solve loop and a remote service feed it the same way.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table


class ProgressDisplay:
    """A live table on a terminal; one plain line per step elsewhere (logs, CI, pipes)."""

    def __init__(
        self, title: str, *, max_attempts: int | None = None, stream: TextIO | None = None
    ):
        self.title = title
        self.max_attempts = max_attempts
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream)
        self.live: Live | None = None
        self.started = time.monotonic()
        self.attempts = 0
        self.passed = 0
        self.best_score: float | None = None
        self.step = 0
        self.adapter_version = 0
        self.loss: float | None = None
        self.kl: float | None = None
        self.last_feedback = ""
        self.status = "running"

    def __enter__(self) -> ProgressDisplay:
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=8)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "attempt":
            self.attempts = max(self.attempts, int(event["index"]))
            verdict = event.get("verdict") or {}
            self.passed += bool(verdict.get("passed"))
            score = float(verdict.get("score", 0.0))
            self.best_score = score if self.best_score is None else max(self.best_score, score)
            if verdict.get("feedback"):
                self.last_feedback = verdict["feedback"]
        elif kind == "step":
            self.step = int(event["step"])
            self.adapter_version = int(event.get("adapter_version", self.adapter_version))
            metrics = event.get("metrics") or {}
            self.loss, self.kl = metrics.get("loss"), metrics.get("kl")
            if self.live is None:  # plain lines: no wrapping, no markup
                print(self._line(), file=self.stream, flush=True)
        elif kind in ("solved", "exhausted", "failed", "cancelled"):
            self.status = kind
        if self.live is not None:
            self.live.update(self._render())

    def _best(self) -> str:
        return "-" if self.best_score is None else f"{self.best_score:.2f}"

    def _fmt(self, x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    def _line(self) -> str:
        budget = f"/{self.max_attempts}" if self.max_attempts else ""
        return (
            f"step {self.step:>3}  attempts {self.attempts}{budget}  passed {self.passed}  "
            f"best {self._best()}  loss {self._fmt(self.loss)}  kl {self._fmt(self.kl)}  "
            f"adapter v{self.adapter_version}  {time.monotonic() - self.started:.0f}s"
        )

    def _render(self) -> Table:
        table = Table(title=self.title, show_header=False, expand=False)
        table.add_column(style="bold")
        table.add_column()
        budget = f" / {self.max_attempts}" if self.max_attempts else ""
        rows = [
            ("status", self.status),
            ("attempts", f"{self.attempts}{budget}"),
            ("passed", str(self.passed)),
            ("best score", self._best()),
            ("SDPO step", str(self.step)),
            ("loss / KL", f"{self._fmt(self.loss)} / {self._fmt(self.kl)}"),
            ("adapter", f"v{self.adapter_version}"),
            ("elapsed", f"{time.monotonic() - self.started:.0f} s"),
            ("last feedback", self.last_feedback[:300]),
        ]
        for k, v in rows:
            table.add_row(k, v)
        return table
