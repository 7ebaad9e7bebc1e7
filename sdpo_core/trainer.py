"""The SDPO trainer: a LoRA student on a frozen base model, distilled towards a self-teacher.

One base model is loaded once and serves many problems: `reset(cfg)` puts a fresh LoRA
student (adapter "student") and its teacher (adapter "teacher", an EMA of the student) on it.
The trust-region teacher needs no second adapter: its logits are
lerp(ref_logits, student_logits, alpha) on the teacher context, ref = the base (adapter off).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from sdpo_core.chat import encode_chat
from sdpo_core.config import SDPOConfig
from sdpo_core.loss import sdpo_loss

STUDENT = "student"
TEACHER = "teacher"


@dataclass
class RolloutBatch:
    """One rollout group of a single prompt, ready for an SDPO update.

    prompt_ids:          the student's prompt tokens (chat template applied), shared by all.
    response_ids:        per sample, the response tokens.
    teacher_prompt_ids:  per sample, the teacher's prompt tokens; None = masked (no signal).
    """

    prompt_ids: list[int]
    response_ids: list[list[int]]
    teacher_prompt_ids: list[list[int] | None]


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory `tmp` to `final`, replacing what was there."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


class SDPOTrainer:
    def __init__(
        self, model_path: str | Path, *, device: str | None = None, dtype: str | None = None
    ) -> None:
        self.model_path = str(model_path)
        self.device = pick_device(device)
        torch_dtype = getattr(torch, dtype) if dtype else torch.float32
        if dtype is None and self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            torch_dtype = torch.bfloat16
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        base = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch_dtype)
        base.to(self.device)
        base.requires_grad_(False)
        self.base: PreTrainedModel = base
        self.model: PeftModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.cfg = SDPOConfig()
        self.updates = 0

    # ------------------------------------------------------------------ setup
    def encode_chat(self, user_message: str) -> list[int]:
        """The user message rendered with the chat template plus the generation prompt, with
        the current config's system prompt and thinking switch (sdpo_core/chat.py)."""
        return encode_chat(
            self.tokenizer,
            user_message,
            system_prompt=self.cfg.system_prompt,
            enable_thinking=self.cfg.enable_thinking,
        )

    def reset(self, cfg: SDPOConfig) -> None:
        """Fresh student and teacher adapters and optimizer for a new problem."""
        self.cfg = cfg
        seed_everything(cfg.seed)
        base = self.model.unload() if self.model is not None else self.base
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.target_modules,
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, lora, adapter_name=STUDENT)
        if cfg.teacher_regularization == "ema":
            self.model.add_adapter(TEACHER, lora)
            with torch.no_grad():
                for s, t in self._adapter_pairs():
                    t.copy_(s)
        self.model.set_adapter(STUDENT)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.updates = 0

    def _adapter_pairs(self) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        named = dict(self.model.named_parameters())
        pairs = []
        for name, p in named.items():
            if f".{STUDENT}." in name:
                pairs.append((p, named[name.replace(f".{STUDENT}.", f".{TEACHER}.")]))
        return pairs

    @contextmanager
    def _adapter(self, name: str | None):
        """Run with adapter `name` active (None = the bare base); the student afterwards."""
        try:
            if name is None:
                with self.model.disable_adapter():
                    yield
            else:
                self.model.set_adapter(name)
                yield
        finally:
            self.model.set_adapter(STUDENT)  # also restores requires_grad on the student only

    # ------------------------------------------------------------------ forward passes
    def _response_logits(
        self, prompts: list[list[int]], responses: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits predicting each response token.

        Returns logits [B, T, V], response ids [B, T], mask [B, T] (T = longest response).
        """
        seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding keeps position ids = arange
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        logits = self.model(
            input_ids=ids.to(self.device), attention_mask=attn.to(self.device)
        ).logits  # [B, width, V]
        t_max = max(len(r) for r in responses)
        out = logits.new_zeros((len(seqs), t_max, logits.shape[-1]))
        resp = torch.full((len(seqs), t_max), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(seqs), t_max), dtype=torch.bool, device=self.device)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            start = len(p) - 1  # the logit at position j predicts token j + 1
            out[i, : len(r)] = logits[i, start : start + len(r)]
            resp[i, : len(r)] = torch.tensor(r, device=self.device)
            mask[i, : len(r)] = True
        return out, resp, mask

    @torch.no_grad()
    def _teacher_logits(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        if self.cfg.teacher_regularization == "ema":
            with self._adapter(TEACHER):
                return self._response_logits(prompts, responses)[0]
        with self._adapter(None):
            ref = self._response_logits(prompts, responses)[0]
        cur = self._response_logits(prompts, responses)[0]
        return torch.lerp(ref, cur, self.cfg.trust_region_alpha)

    @torch.no_grad()
    def sequence_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        """The student's log-prob of each response token (for checks against an engine)."""
        self.model.eval()
        logits, resp, _ = self._response_logits([prompt_ids], [response_ids])
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp[0].gather(-1, resp[0][:, None])[:, 0].tolist()

    # ------------------------------------------------------------------ the update
    def step(self, batch: RolloutBatch) -> dict[str, float]:
        """One SDPO update per `cfg.updates_per_batch`; returns metrics of the last one."""
        cfg = self.cfg
        live = [i for i, t in enumerate(batch.teacher_prompt_ids) if t is not None]
        n = len(batch.response_ids)
        metrics: dict[str, float] = {
            "masked_fraction": 1.0 - len(live) / max(n, 1),
            "tokens": float(sum(len(batch.response_ids[i]) for i in live)),
        }
        if not live or metrics["tokens"] == 0:
            return {**metrics, "loss": 0.0, "kl": 0.0, "grad_norm": 0.0, "skipped": 1.0}
        chunks = [
            live[k : k + cfg.micro_batch_size] for k in range(0, len(live), cfg.micro_batch_size)
        ]
        total_tokens = metrics["tokens"]
        self.model.train()

        old_logprobs: list[torch.Tensor | None] = [None] * len(chunks)
        t_teacher = t_student = 0.0
        for update in range(cfg.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = kl_sum = 0.0
            for c, chunk in enumerate(chunks):
                responses = [batch.response_ids[i] for i in chunk]
                t0 = _clock(self.device)
                # computed per micro-batch (not cached) so only one chunk's logits live at once
                teacher = self._teacher_logits(
                    [batch.teacher_prompt_ids[i] for i in chunk], responses
                )
                t1 = _clock(self.device)
                t_teacher += t1 - t0
                s_logits, resp, mask = self._response_logits(
                    [batch.prompt_ids] * len(chunk), responses
                )
                if cfg.updates_per_batch > 1 and update == 0:
                    # old log-probs from the trainer itself, so the ratio is exactly 1 at first
                    with torch.no_grad():
                        lp = torch.log_softmax(s_logits.float() / cfg.temperature, dim=-1)
                        old_logprobs[c] = lp.gather(-1, resp[..., None])[..., 0]
                loss, m = sdpo_loss(
                    s_logits,
                    teacher,
                    resp,
                    mask,
                    top_k=cfg.top_k,
                    alpha=cfg.alpha,
                    add_tail=cfg.add_tail,
                    temperature=cfg.temperature,
                    old_logprobs=old_logprobs[c],
                    is_clip=cfg.is_clip,
                )
                weight = m["num_tokens"] / total_tokens  # token mean over the whole batch
                (loss * weight).backward()
                loss_sum += m["loss"] * weight
                kl_sum += m["kl"] * weight
                del teacher, s_logits, loss
                t_student += _clock(self.device) - t1
            t2 = _clock(self.device)
            params = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.optimizer.step()
            self.updates += 1
            if cfg.teacher_regularization == "ema":
                with torch.no_grad():
                    for s, t in self._adapter_pairs():
                        t.lerp_(s, cfg.ema_rate)
            t_student += _clock(self.device) - t2
        self.model.eval()
        gn = float(grad_norm)
        metrics.update(
            loss=loss_sum,
            kl=kl_sum,
            grad_norm=gn if math.isfinite(gn) else float("nan"),
            time_teacher=t_teacher,
            time_student=t_student,
        )
        return metrics

    # ------------------------------------------------------------------ persistence
    def save_adapter(self, path: str | Path) -> None:
        """The student as a standard PEFT adapter (adapter_config.json + safetensors) at `path`,
        loadable by PeftModel.from_pretrained and by vLLM. Written atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp), selected_adapters=[STUDENT])
        # peft saves a non-default adapter under a sub-folder named after it
        inner = tmp / STUDENT if (tmp / STUDENT).is_dir() else tmp
        if inner != tmp:
            final_tmp = path.with_name(path.name + ".tmp2")
            shutil.rmtree(final_tmp, ignore_errors=True)
            os.rename(inner, final_tmp)
            shutil.rmtree(tmp)
            tmp = final_tmp
        atomic_replace_dir(tmp, path)

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any]) -> None:
        """Everything needed to continue exactly: both adapters, optimizer, RNG, counters."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in self.model.peft_config:
            state = get_peft_model_state_dict(self.model, adapter_name=name)
            save_file({k: v.contiguous() for k, v in state.items()}, tmp / f"{name}.safetensors")
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "updates": self.updates,
                "cfg": self.cfg.model_dump(),
                "rng": rng_state(),
                "extra": extra,
            },
            tmp / "trainer.pt",
        )
        atomic_replace_dir(tmp, path)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore a checkpoint written by save_checkpoint; returns its `extra`."""
        path = Path(path)
        blob = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        self.reset(SDPOConfig.model_validate(blob["cfg"]))
        for name in list(self.model.peft_config):
            state = load_file(path / f"{name}.safetensors", device=str(self.device))
            set_peft_model_state_dict(self.model, state, adapter_name=name)
        self.model.set_adapter(STUDENT)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.updates = blob["updates"]
        set_rng_state(blob["rng"])
        return blob["extra"]


def _clock(device: torch.device) -> float:
    """perf_counter after the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
