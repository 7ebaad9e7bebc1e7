"""Safe extraction of the adapter archive (no absolute paths, no escapes, no links or devices)."""

from __future__ import annotations

import tarfile
from pathlib import Path


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a tar.gz into `dest`, refusing members that would land outside it."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            target = (dest / m.name).resolve()
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"refusing archive member {m.name!r}: not a file or directory")
            if m.name.startswith("/") or (target != dest and dest not in target.parents):
                raise ValueError(f"refusing archive member {m.name!r}: outside {dest}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Python < 3.10.12: the checks above are the filter
            tar.extractall(dest, members=members)
