"""The toy world: a bundled tiny model and a table-lookup problem family (docs/design.md).

DEFAULT_MODEL_DIR   the committed checkpoint (Llama config + HF tokenizer, float32)
make_problem        (seed, n_keys) -> problem JSON
HARD_SUITE          fixed very hard problems, N = 6..7 (base pass@64 ~ 1e-5)
DISCOVERY_SUITE     fixed hard problems, N = 4 (base pass@64 = 0.006), benchmarks/discovery.py
"""

from __future__ import annotations

from pathlib import Path

from sdpo_core.toy.world import DISCOVERY_SUITE, EASY_EXAMPLE, HARD_SUITE, make_problem

DEFAULT_MODEL_DIR: Path = Path(__file__).resolve().parent / "model"

__all__ = ["DEFAULT_MODEL_DIR", "DISCOVERY_SUITE", "EASY_EXAMPLE", "HARD_SUITE", "make_problem"]
