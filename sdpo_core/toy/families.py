"""Tiny random-weight models of the architecture families users run (tests, benchmarks).

Each is built offline from the family's own config class in transformers
(`AutoConfig.for_model(model_type, ...)` + `AutoModelForCausalLM.from_config`) with the bundled
toy tokenizer, so the trainer and vLLM run the real architecture code with no download.

Sizes respect what vLLM's CPU attention kernel accepts: head_dim must be one of 32, 64, 80, 96,
112, 128, 160, 192, 224, 256, 512 (head_dim 16 builds, but the first request kills the
server's engine with "Unsupported CPU attention configuration: head_dim=16").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# model_type -> extra config fields on top of the common tiny shape
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen3": {},
    "qwen3_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "qwen2": {},
    "llama": {},
    "mistral": {"sliding_window": None},
    # Gemma ties its output head to the embeddings (vLLM's Gemma2 has no separate lm_head)
    "gemma2": {"query_pre_attn_scalar": 32, "sliding_window": 64, "tie_word_embeddings": True},
    "gemma3_text": {
        "query_pre_attn_scalar": 32,
        "sliding_window": 64,
        "tie_word_embeddings": True,
    },
    "phi3": {},
}

HEAD_DIM = 32  # the smallest head size vLLM's CPU attention supports


def tiny_config(
    model_type: str,
    *,
    vocab_size: int,
    pad_token_id: int,
    eos_token_id: int,
    max_positions: int = 2048,
) -> Any:
    """A 2-layer, hidden-64 config of `model_type` built from transformers' config class,
    with a context window of `max_positions` tokens."""
    from transformers import AutoConfig

    if model_type not in FAMILIES:
        raise ValueError(f"unknown family {model_type!r}; one of {sorted(FAMILIES)}")
    fields: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": max_positions,
        "pad_token_id": pad_token_id,
        "eos_token_id": eos_token_id,
        "bos_token_id": None,
        "tie_word_embeddings": False,
        **FAMILIES[model_type],
    }
    return AutoConfig.for_model(model_type, **fields)


# never_stop: the output head's logits get std LOGIT_STD and EOS's row is zero, so EOS's logit
# (0) sits ~3 x LOGIT_STD below the largest of the vocabulary's (p(EOS) measured at most 8e-8
# over 8,192 positions of a qwen3): responses run to max_new_tokens (random weights otherwise
# stop after ~vocab tokens: 204 and 464 tokens in one try).
LOGIT_STD = 7.0


def build_tiny_model(
    model_type: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    max_positions: int = 2048,
    never_stop: bool = False,
) -> Path:
    """Write a random-weight float32 model of `model_type` plus the toy tokenizer to `out_dir`
    (`max_positions`: its context window; `never_stop`: it practically never emits EOS)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdpo_core.toy import DEFAULT_MODEL_DIR

    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    cfg = tiny_config(
        model_type,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        max_positions=max_positions,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    if never_stop:
        if cfg.tie_word_embeddings:
            raise ValueError(f"never_stop needs an untied output head; {model_type} ties it")
        with torch.no_grad():
            head = model.get_output_embeddings().weight  # [V, H]; hidden states have norm ~8
            head.mul_(LOGIT_STD / (head.std() * cfg.hidden_size**0.5))
            head[tok.eos_token_id] = 0.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
