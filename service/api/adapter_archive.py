"""The adapter download: a tar.gz of a run's PEFT adapter directory (latest or best)."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path


def archive_adapter(src: Path) -> str:
    """tar.gz of the adapter directory; retried if a checkpoint replaces it mid-read."""
    for attempt in range(5):
        fd, path = tempfile.mkstemp(suffix=".tar.gz")
        os.close(fd)
        try:
            with tarfile.open(path, "w:gz") as tar:
                tar.add(src, arcname="adapter")
            return path
        except FileNotFoundError:
            os.unlink(path)
            if attempt == 4:
                raise
    raise AssertionError("unreachable")
