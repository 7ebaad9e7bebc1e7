"""Paths as results files record them: relative to the repository, never a machine's own."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repo_relative(path: str | os.PathLike[str]) -> str:
    """`path` relative to the repository root when it lies inside it, else as given (a model
    directory the user named, such as /models/Qwen3-8B). Symlinks are not followed, so a
    linked `.venv-sandbox` still reads as `.venv-sandbox/bin/python3`."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)
