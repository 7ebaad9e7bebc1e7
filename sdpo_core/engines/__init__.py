"""Generation engines: `hf` (in-process transformers) and `vllm` (an OpenAI-compatible server)."""

from sdpo_core.engines.base import Engine

__all__ = ["Engine"]
