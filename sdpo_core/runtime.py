"""A loaded base model with its trainer and generation engine, reused across problems."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sdpo_core.engines.base import Engine
from sdpo_core.trainer import SDPOTrainer

EngineName = Literal["hf", "vllm"]


def default_model_dir() -> Path:
    from sdpo_core.toy import DEFAULT_MODEL_DIR

    return Path(DEFAULT_MODEL_DIR)


@dataclass
class Runtime:
    model_path: str
    trainer: SDPOTrainer
    engine: Engine
    vllm_server: Any = None  # the VLLMServer this runtime started (stopped on close), if any

    def close(self) -> None:
        self.engine.close()
        if self.vllm_server is not None:
            self.vllm_server.stop()


def load_runtime(
    model_path: str | Path | None = None,
    *,
    engine: EngineName = "hf",
    vllm_url: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    max_lora_rank: int = 16,
    vllm_model_name: str | None = None,
) -> Runtime:
    """Load the base model once. engine="vllm" without a URL starts a local vLLM server
    (from .venv-vllm, or $SDPO_VLLM_PYTHON) that allows LoRA ranks up to `max_lora_rank`;
    with a URL, `vllm_model_name` is the server's name for the base model (default: the path,
    vLLM's own default)."""
    path = str(model_path or default_model_dir())
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"no Hugging Face model at {path} (a directory with config.json and a tokenizer); "
            "models are not downloaded at run time"
        )
    trainer = SDPOTrainer(path, device=device, dtype=dtype)
    if engine == "hf":
        from sdpo_core.engines.hf import HFEngine

        return Runtime(path, trainer, HFEngine(trainer))
    if engine == "vllm":
        from sdpo_core.engines.vllm import VLLMEngine
        from sdpo_core.engines.vllm_server import launch_vllm_server

        server = None
        if vllm_url is None:
            server = launch_vllm_server(path, max_lora_rank=max_lora_rank)
            vllm_url, served_name = server.url, server.model_name
        else:
            served_name = vllm_model_name or path
        vllm = VLLMEngine(vllm_url, served_name)
        vllm.wait_ready()
        return Runtime(path, trainer, vllm, server)
    raise ValueError(f"unknown engine {engine!r}; one of 'hf', 'vllm'")
