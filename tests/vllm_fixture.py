"""A real vLLM CPU server, started once per test session, serving the bundled toy model.

Imported by tests/test_vllm_engine.py. vLLM runs from its own environment (.venv-vllm,
`make vllm-env`); when that is missing the tests FAIL (CI installs it), they do not skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sdpo_core.engines.vllm_server import (
    VLLMServer,
    VLLMServerError,
    launch_vllm_server,
    resolve_vllm_python,
)

MAX_LORA_RANK = 16  # SDPOConfig's default lora_rank
SERVED_NAME = "sdpo-base"


@pytest.fixture(scope="session")
def vllm_server(
    toy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """The vLLM server (CPU build) with runtime LoRA loading, serving the toy model."""
    try:
        resolve_vllm_python()
    except VLLMServerError as e:
        pytest.fail(str(e))
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    try:
        server = launch_vllm_server(
            toy_model_dir,
            max_lora_rank=MAX_LORA_RANK,
            max_loras=2,
            served_model_name=SERVED_NAME,
            log_path=log_path,
            startup_timeout=600,
        )
    except VLLMServerError as e:
        pytest.fail(str(e))
    print(f"\nvLLM server ready in {server.startup_seconds:.1f} s at {server.url}")
    yield server
    server.stop()


def make_random_adapter(
    model_dir: Path, out_dir: Path, *, seed: int, rank: int = 16, scale: float = 0.05
) -> Path:
    """A standard PEFT LoRA adapter on every linear layer with random nonzero A and B.

    `scale` is the std of the LoRA entries; B != 0, so the adapter really changes the model.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(out_dir)
    return out_dir
