"""Shared fixtures: the bundled toy model and a runtime loaded once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdpo_core.toy import DEFAULT_MODEL_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def toy_model_dir() -> Path:
    path = Path(os.environ.get("SDPO_TEST_MODEL", DEFAULT_MODEL_DIR))
    assert (path / "config.json").exists(), (
        f"the bundled toy model is missing at {path}; run python -m sdpo_core.toy.pretrain"
    )
    return path


@pytest.fixture(scope="session")
def runtime(toy_model_dir: Path) -> Iterator:
    import torch

    from sdpo_core.runtime import load_runtime

    torch.set_num_threads(2)
    rt = load_runtime(toy_model_dir, engine="hf", device="cpu")
    yield rt
    rt.close()
