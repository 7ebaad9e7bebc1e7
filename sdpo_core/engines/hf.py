"""The `hf` engine: in-process transformers generation on the trainer's own model.

It samples from the live student adapter, so "loading" a new adapter version costs nothing:
the weights the trainer just updated are the weights it generates with.
"""

from __future__ import annotations

import torch

from sdpo_core.trainer import SDPOTrainer
from sdpo_core.types import Completion, SamplingParams


class HFEngine:
    name = "hf"

    def __init__(self, trainer: SDPOTrainer, *, max_batch: int = 64) -> None:
        self.trainer = trainer
        self.max_batch = max_batch
        self.adapter_version = 0

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        remaining = sampling.n
        while remaining > 0:
            n = min(remaining, self.max_batch)
            out.extend(self._generate(prompt_ids, n, sampling))
            remaining -= n
        return out

    def _generate(
        self, prompt_ids: list[int], n: int, sampling: SamplingParams
    ) -> list[Completion]:
        model = self.trainer.model if self.trainer.model is not None else self.trainer.base
        tok = self.trainer.tokenizer
        model.eval()
        ids = torch.tensor([prompt_ids] * n, device=self.trainer.device)
        eos = tok.eos_token_id
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=tok.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        new = gen.sequences[:, ids.shape[1] :]  # [n, L]
        logits = torch.stack(gen.logits, dim=1).float()  # [n, L, V] raw, before temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, new[..., None])[..., 0]  # [n, L]
        completions = []
        for row, row_logp in zip(new.tolist(), logp.tolist(), strict=True):
            length = row.index(eos) + 1 if eos in row else len(row)
            finish = "stop" if eos in row else "length"
            text = tok.decode(row[:length], skip_special_tokens=True)
            completions.append(Completion(text, row[:length], row_logp[:length], finish))
        return completions

    def context_window(self) -> int | None:
        return None  # it generates with the trainer's own model

    def load_adapter(self, path: str, version: int) -> None:
        # The trainer's student adapter already holds these weights.
        self.adapter_version = version

    def close(self) -> None:
        pass
