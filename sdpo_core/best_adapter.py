"""Where a run keeps the adapter that sampled its best attempt (written by sdpo_core/solve.py,
read by the API without importing torch): `best_adapter/` in the checkpoint directory, a
PEFT directory plus `best.json` ({"attempt", "score", "adapter_version"}); when version 0
(the base model) sampled the best attempt, `best.json` alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BEST_ADAPTER_DIR = "best_adapter"
BEST_ADAPTER_INFO = "best.json"


def read_best_adapter(checkpoint_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """best_adapter/ of a run and its best.json, or None before the first verified attempt."""
    path = Path(checkpoint_dir) / BEST_ADAPTER_DIR
    try:
        return path, json.loads((path / BEST_ADAPTER_INFO).read_text())
    except FileNotFoundError:
        return None
