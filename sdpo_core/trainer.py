"""The SDPO trainer: a LoRA student on a frozen base model, distilled towards a self-teacher.

One base model is loaded once and serves many problems, several at a time: each problem in
flight has a slot (`TrainingSlot`: its own student and teacher adapters, optimizer, update
count, settings and RNG) on the one PEFT model; `activate(i)` makes slot i the one every
method works on, and `reset(cfg)` puts a fresh student and teacher in the active slot. Slot 0's
adapters are "student" and "teacher", slot i's "student_i" and "teacher_i"; checkpoints name
them "student" and "teacher" whatever the slot, so a run resumes in any slot. Callers that
share the trainer between threads hold `lock` (sdpo_core/slots.py). The EMA teacher is either
- ema_target="delta": an EMA of the student's weight delta B·A per adapted layer (a dense
  matrix per layer, applied to the base by a forward hook when the teacher runs), or
- ema_target="factors": adapter "teacher", an EMA of the factors A and B separately (its delta
  is the product of two averages, which lags the student's delta far more than the rate).
The trust-region teacher needs no second adapter: its logits are
lerp(ref_logits, student_logits, alpha) on the teacher context, ref = the base (adapter off).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from sdpo_core.chat import encode_chat
from sdpo_core.config import SDPOConfig
from sdpo_core.loss import (
    chunk_rows,
    rollout_is_weights,
    sdpo_loss,
    sdpo_loss_chunked,
    token_logprobs,
)
from sdpo_core.model_thread import on_model_thread
from sdpo_core.slots import FairLock

STUDENT = "student"  # slot 0's adapter names, and the names in checkpoint files
TEACHER = "teacher"


@dataclass
class TrainingSlot:
    """One problem's training state on the shared base model."""

    index: int
    cfg: SDPOConfig = field(default_factory=SDPOConfig)
    optimizer: torch.optim.Optimizer | None = None
    updates: int = 0
    teacher_delta: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> EMA(B·A)
    rng: dict[str, Any] | None = None  # its RNG while another slot is active

    @property
    def student(self) -> str:
        return STUDENT if self.index == 0 else f"{STUDENT}_{self.index}"

    @property
    def teacher(self) -> str:
        return TEACHER if self.index == 0 else f"{TEACHER}_{self.index}"


@dataclass
class RolloutBatch:
    """One rollout group of a single prompt, ready for an SDPO update.

    prompt_ids:          the student's prompt tokens (chat template applied), shared by all.
    response_ids:        per sample, the response tokens.
    teacher_prompt_ids:  per sample, the teacher's prompt tokens; None = masked (no signal).
    rollout_logprobs:    per sample, the sampling engine's temperature-1 log-prob of each
                         response token (Completion.logprobs), for cfg.rollout_is; None = not
                         known (no rollout correction).
    """

    prompt_ids: list[int]
    response_ids: list[list[int]]
    teacher_prompt_ids: list[list[int] | None]
    rollout_logprobs: list[list[float]] | None = None


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
    times_itself = False  # its caller times its updates (a SlotTrainer times its own)

    @on_model_thread
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
        self.chunked_loss = True  # False: the unchunked reference loss (tests, benchmarks)
        self._check_head()
        self.slots: dict[int, TrainingSlot] = {0: TrainingSlot(0)}
        self.slot = self.slots[0]  # the active slot
        self.lock = FairLock()  # held by whoever uses the model when several problems share it
        self._tokenizer_lock = threading.Lock()  # encoding needs no model, only the tokenizer
        self._checkpointing = False  # activation checkpointing on the base now

    # ------------------------------------------------------------------ slots
    # the active slot's state, under the names the rest of the trainer uses
    cfg = property(lambda self: self.slot.cfg)
    optimizer = property(lambda self: self.slot.optimizer)
    teacher_delta = property(lambda self: self.slot.teacher_delta)

    @property
    def updates(self) -> int:
        return self.slot.updates

    @updates.setter
    def updates(self, value: int) -> None:
        self.slot.updates = value

    @property
    def _student(self) -> str:
        return self.slot.student

    @property
    def _teacher(self) -> str:
        return self.slot.teacher

    @on_model_thread
    def activate(self, index: int) -> None:
        """Make slot `index` the one the trainer works on (created empty the first time): its
        adapter active and trainable, its RNG the process's (the previous slot's put aside)."""
        if index == self.slot.index:
            return
        self.slot.rng = rng_state()
        self.slot = self.slots.setdefault(index, TrainingSlot(index))
        if self.slot.rng is not None:
            set_rng_state(self.slot.rng)
            self.slot.rng = None
        if self.model is not None and self._student in self.model.peft_config:
            self.model.set_adapter(self._student)
            self._use_checkpointing(self.cfg.gradient_checkpointing)

    @on_model_thread
    def release(self, index: int) -> None:
        """Free slot `index`'s adapters and optimizer (its problem is done)."""
        slot = self.slots.get(index)
        if slot is None or self.model is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for name in (slot.student, slot.teacher):
                if name in self.model.peft_config and len(self.model.peft_config) > 1:
                    self.model.delete_adapter(name)
        slot.optimizer, slot.teacher_delta = None, {}
        if self.slot.index != index and self._student in self.model.peft_config:
            self.model.set_adapter(self._student)

    def _use_checkpointing(self, wanted: bool) -> None:
        """Activation checkpointing on or off; a no-op when it already is (switching walks
        every module, and slots switch on every call when several problems share the model)."""
        base = self.base
        wanted = wanted and base.supports_gradient_checkpointing
        if wanted == self._checkpointing:
            return
        if wanted:
            # non-reentrant (transformers' default): the EMA teacher's forward hooks run again,
            # the same, in the recomputation; only in train mode, so the teacher is untouched
            base.activation_checkpointing_enable()
        else:
            base.activation_checkpointing_disable()
        self._checkpointing = wanted

    # ------------------------------------------------------------------ setup
    @property
    def context_window(self) -> int | None:
        """The most tokens the model's positions cover (config max_position_embeddings); None
        when its config does not say."""
        return getattr(self.base.config.get_text_config(), "max_position_embeddings", None)

    def encode_chat(self, user_message: str, cfg: SDPOConfig | None = None) -> list[int]:
        """The user message rendered with the chat template plus the generation prompt, with
        the system prompt and thinking switch of `cfg` (default: the active slot's; see
        sdpo_core/chat.py). Needs only the tokenizer, not the model's lock."""
        cfg = cfg or self.cfg
        with self._tokenizer_lock:
            return encode_chat(
                self.tokenizer,
                user_message,
                system_prompt=cfg.system_prompt,
                enable_thinking=cfg.enable_thinking,
            )

    @on_model_thread
    def reset(self, cfg: SDPOConfig) -> None:
        """Fresh student and teacher adapters and optimizer for a new problem, in the active
        slot (the other slots' adapters are untouched)."""
        slot = self.slot
        slot.cfg = cfg
        seed_everything(cfg.seed)
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.target_modules,
            task_type="CAUSAL_LM",
        )
        if self.model is None:
            self.model = get_peft_model(self.base, lora, adapter_name=slot.student)
        else:  # the same initial weights as a fresh get_peft_model under the same seed
            with warnings.catch_warnings():  # "adapter ... was active which is now deleted"
                warnings.simplefilter("ignore", UserWarning)
                for name in (slot.student, slot.teacher):
                    if name in self.model.peft_config:
                        self.model.delete_adapter(name)
            self.model.add_adapter(slot.student, lora)
        self._use_checkpointing(cfg.gradient_checkpointing)
        slot.teacher_delta = {}
        if cfg.teacher_regularization == "ema" and cfg.ema_target == "factors":
            self.model.add_adapter(slot.teacher, lora)
            with torch.no_grad():
                for s, t in self._adapter_pairs():
                    t.copy_(s)
        elif cfg.teacher_regularization == "ema":
            slot.teacher_delta = {
                name: self._student_delta(layer) for name, layer in self._lora_layers()
            }
        self.model.set_adapter(slot.student)
        params = [p for n, p in self.model.named_parameters() if f".{slot.student}." in n]
        slot.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        slot.updates = 0

    def _adapter_pairs(self) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        named = dict(self.model.named_parameters())
        pairs = []
        student, teacher = f".{self._student}.", f".{self._teacher}."
        for name, p in named.items():
            if student in name:
                pairs.append((p, named[name.replace(student, teacher)]))
        return pairs

    def _lora_layers(self) -> list[tuple[str, LoraLayer]]:
        return [
            (name, m)
            for name, m in self.model.named_modules()
            if isinstance(m, LoraLayer) and self._student in m.lora_A
        ]

    @torch.no_grad()
    def _student_delta(self, layer: LoraLayer) -> torch.Tensor:
        """The student's weight delta of one layer: scaling · B·A, shaped like the base weight."""
        name = self._student
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight  # [r, in], [out, r]
        return (b.float() @ a.float() * layer.scaling[name]).to(a.dtype)

    @torch.no_grad()
    def _update_teacher(self) -> None:
        """Move the EMA teacher towards the student by `ema_rate` (once per batch, after its
        updates)."""
        rate = self.cfg.ema_rate
        if self.teacher_delta:
            for name, layer in self._lora_layers():
                self.teacher_delta[name].lerp_(self._student_delta(layer), rate)
        else:
            for s, t in self._adapter_pairs():
                t.lerp_(s, rate)

    @contextmanager
    def _teacher_weights(self):
        """Run with the EMA teacher's weights: the teacher adapter, or (ema_target="delta")
        the bare base plus each layer's EMA delta, added by a forward hook."""
        if not self.teacher_delta:
            with self._adapter(self._teacher):
                yield
            return
        hooks = []
        for name, layer in self._lora_layers():
            delta = self.teacher_delta[name]
            hooks.append(
                layer.base_layer.register_forward_hook(
                    lambda _m, args, out, d=delta: out + F.linear(args[0].to(d.dtype), d)
                )
            )
        try:
            with self._adapter(None):
                yield
        finally:
            for h in hooks:
                h.remove()

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
            self.model.set_adapter(self._student)  # also restores requires_grad on it only

    # ------------------------------------------------------------------ forward passes
    def _response_hidden(
        self, prompts: list[list[int]], responses: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Final hidden states at the positions predicting each response token (no logits: the
        loss applies the head one chunk of positions at a time).

        Returns hidden [B, T, H], response ids [B, T], mask [B, T] (T = longest response).
        """
        seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding keeps position ids = arange
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        model = self.model.get_base_model() if self.model is not None else self.base
        hidden = model.get_decoder()(
            input_ids=ids.to(self.device), attention_mask=attn.to(self.device), use_cache=False
        ).last_hidden_state  # [B, width, H]
        t_max = max(len(r) for r in responses)
        out = hidden.new_zeros((len(seqs), t_max, hidden.shape[-1]))
        resp = torch.full((len(seqs), t_max), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(seqs), t_max), dtype=torch.bool, device=self.device)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            start = len(p) - 1  # the state at position j predicts token j + 1
            out[i, : len(r)] = hidden[i, start : start + len(r)]
            resp[i, : len(r)] = torch.tensor(r, device=self.device)
            mask[i, : len(r)] = True
        return out, resp, mask

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits from final hidden states: [..., H] -> [..., V]."""
        logits = self.base.get_output_embeddings()(hidden)
        cap = getattr(self.base.config, "final_logit_softcapping", None)  # Gemma 2
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def _check_head(self) -> None:
        """head(decoder(x)) must be the model's own logits (a family that scales them another
        way would otherwise be trained on the wrong distribution)."""
        ids = torch.arange(1, 5, device=self.device)[None] % self.base.config.vocab_size
        with torch.no_grad():
            want = self.base(input_ids=ids, use_cache=False).logits
            got = self.head(self.base.get_decoder()(input_ids=ids, use_cache=False)[0])
        if not torch.allclose(got.float(), want.float(), atol=1e-3, rtol=1e-3):
            raise ValueError(
                f"{self.model_path}: {type(self.base).__name__}'s logits are not its output "
                "embedding applied to the decoder's last hidden state; the trainer's loss "
                "(sdpo_core/trainer.py, SDPOTrainer.head) does not support this family yet"
            )

    def _response_logits(
        self, prompts: list[list[int]], responses: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full logits [B, T, V] predicting each response token, ids, mask (the unchunked
        reference; the step never builds this)."""
        hidden, resp, mask = self._response_hidden(prompts, responses)
        return self.head(hidden), resp, mask

    @torch.no_grad()
    def _teacher_hidden(
        self, prompts: list[list[int]], responses: list[list[int]]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, float] | None]:
        """The teacher's hidden states and, for the trust-region teacher, (reference hidden
        states, alpha): its logits are lerp(head(ref), head(hidden), alpha)."""
        if self.cfg.teacher_regularization == "ema":
            with self._teacher_weights():
                return self._response_hidden(prompts, responses)[0], None
        with self._adapter(None):
            ref = self._response_hidden(prompts, responses)[0]
        cur = self._response_hidden(prompts, responses)[0]
        return cur, (ref, self.cfg.trust_region_alpha)

    def _teacher_head(
        self, hidden: torch.Tensor, ref: tuple[torch.Tensor, float] | None, where: Any = ...
    ) -> torch.Tensor:
        """The teacher's logits at `hidden[where]`: head(hidden), or lerp(head(ref),
        head(hidden), alpha) for the trust-region teacher (`ref` from _teacher_hidden)."""
        logits = self.head(hidden[where])
        return logits if ref is None else torch.lerp(self.head(ref[0][where]), logits, ref[1])

    @torch.no_grad()
    def _teacher_logits(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        """The teacher's full logits [B, T, V] (the unchunked reference)."""
        return self._teacher_head(*self._teacher_hidden(prompts, responses))

    @torch.no_grad()
    def _teacher_entropy(
        self, hidden: torch.Tensor, ref: tuple[torch.Tensor, float] | None
    ) -> torch.Tensor:
        """Per response position, the entropy of the teacher's distribution (logits
        head(hidden), or lerp(head(ref), head(hidden), alpha) for the trust-region teacher) at
        the sampling temperature: [B, T, H] -> [B, T], chunked (no [B, T, V] tensor)."""
        out = torch.zeros(hidden.shape[:2], dtype=torch.float32, device=hidden.device)
        rows = chunk_rows(self.head(hidden[:1, :1]).shape[-1])
        for b in range(hidden.shape[0]):
            for t in range(0, hidden.shape[1], rows):
                logits = self._teacher_head(hidden, ref, (b, slice(t, t + rows)))
                lp = torch.log_softmax(logits.float() / self.cfg.temperature, -1)
                out[b, t : t + rows] = -(lp.exp() * lp).sum(-1)
        return out

    @on_model_thread
    @torch.no_grad()
    def sequence_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        """The student's log-prob of each response token (for checks against an engine)."""
        self.model.eval()
        hidden, resp, _ = self._response_hidden([prompt_ids], [response_ids])
        return token_logprobs(hidden[0], self.head, resp[0]).tolist()

    def _micro_batch_loss(
        self,
        batch: RolloutBatch,
        chunk: list[int],
        old_logprobs: torch.Tensor | None,
        rollout_weights: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor | None, float]:
        """The SDPO loss of one micro-batch (samples `chunk`) as its share of the step's loss,
        from hidden states in chunks of positions (`self.chunked_loss`, the default) or from
        full logits (the reference). Returns loss, metrics, the student's token log-probs
        [B, T], the rollout weights [B, T] (None without rollout correction), teacher seconds.
        `rollout_weights`: those of this micro-batch's first update (later updates reuse them,
        as verl computes them once per batch against the trainer's policy before the update)."""
        cfg = self.cfg
        responses = [batch.response_ids[i] for i in chunk]
        t0 = _clock(self.device)
        t_hidden, ref = self._teacher_hidden(
            [batch.teacher_prompt_ids[i] for i in chunk], responses
        )
        weights = None  # teacher_entropy_gate: positions where the teacher is unsure
        if cfg.teacher_entropy_gate is not None:
            unsure = self._teacher_entropy(t_hidden, ref) >= cfg.teacher_entropy_gate
            weights = torch.where(unsure, cfg.unsure_weight, 1.0)
        t_teacher = _clock(self.device) - t0
        s_hidden, resp, mask = self._response_hidden([batch.prompt_ids] * len(chunk), responses)
        rollout = None
        if (
            cfg.rollout_is is not None
            and batch.rollout_logprobs is not None
            and rollout_weights is None
        ):
            rollout = torch.zeros(mask.shape, dtype=torch.float32, device=self.device)
            for row, i in enumerate(chunk):
                lp = batch.rollout_logprobs[i]
                if len(lp) != len(batch.response_ids[i]):
                    raise ValueError(
                        f"sample {i}: {len(lp)} sampling log-probs for "
                        f"{len(batch.response_ids[i])} response tokens"
                    )
                rollout[row, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        kw = dict(
            top_k=cfg.top_k,
            alpha=cfg.alpha,
            add_tail=cfg.add_tail,
            temperature=cfg.temperature,
            old_logprobs=old_logprobs,
            is_clip=cfg.is_clip,
            token_weights=weights,
            rollout_logprobs=rollout,
            rollout_is_cap=cfg.rollout_is_cap,
            rollout_weights=rollout_weights,
            aggregation=cfg.loss_aggregation,
            num_sequences=len(batch.response_ids),
            num_tokens=sum(
                len(r)
                for r, t in zip(batch.response_ids, batch.teacher_prompt_ids, strict=True)
                if t is not None
            ),
        )
        if self.chunked_loss:
            loss, m, lp, rw = sdpo_loss_chunked(
                s_hidden, t_hidden, self.head, resp, mask, teacher_ref=ref, **kw
            )
            return loss, m, lp, rw, t_teacher
        s_logits = self.head(s_hidden)  # [B, T, V]
        rw = None
        with torch.no_grad():
            t_logits = self._teacher_head(t_hidden, ref)
            lp = torch.log_softmax(s_logits.float() / cfg.temperature, dim=-1)
            lp = lp.gather(-1, resp[..., None])[..., 0]
            if rollout is not None:
                raw = torch.log_softmax(s_logits.float(), dim=-1).gather(-1, resp[..., None])
                rw = torch.where(
                    mask, rollout_is_weights(raw[..., 0], rollout, cfg.rollout_is_cap)[0], 0.0
                )
        loss, m = sdpo_loss(s_logits, t_logits, resp, mask, **kw)
        return loss, m, lp, rw, t_teacher

    # ------------------------------------------------------------------ the update
    @on_model_thread
    def step(self, batch: RolloutBatch) -> dict[str, float]:
        """`cfg.updates_per_batch` SDPO updates on one rollout batch, then one EMA teacher
        update (the authors' dp_actor.update_policy: once per batch, after its updates, and only
        if one of them stepped). An update whose gradient norm is not finite is skipped: no
        optimizer step (the authors' _optimizer_step), counted in `skipped_nonfinite`.
        Returns the metrics of the last update (rollout_is_* of the first: its weights hold
        for the batch)."""
        cfg = self.cfg
        live = [i for i, t in enumerate(batch.teacher_prompt_ids) if t is not None]
        n = len(batch.response_ids)
        metrics: dict[str, float] = {
            "masked_fraction": 1.0 - len(live) / max(n, 1),
            "tokens": float(sum(len(batch.response_ids[i]) for i in live)),
        }
        if not live or metrics["tokens"] == 0:
            return {
                **metrics,
                **dict(loss=0.0, kl=0.0, grad_norm=0.0, skipped=1.0, skipped_nonfinite=0.0),
            }
        chunks = [
            live[k : k + cfg.micro_batch_size] for k in range(0, len(live), cfg.micro_batch_size)
        ]
        total_tokens = metrics["tokens"]
        self.model.train()

        old_logprobs: list[torch.Tensor | None] = [None] * len(chunks)
        rollout_weights: list[torch.Tensor | None] = [None] * len(chunks)
        rollout: dict[str, float] = {}
        t_teacher = t_student = 0.0
        skipped = 0
        for update in range(cfg.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = kl_sum = 0.0
            for c, chunk in enumerate(chunks):
                t0 = _clock(self.device)
                # computed per micro-batch (not cached) so only one micro-batch's states live;
                # its loss is its share of the step's loss (cfg.loss_aggregation)
                loss, m, lp, rw, t_t = self._micro_batch_loss(
                    batch, chunk, old_logprobs[c], rollout_weights[c]
                )
                if update == 0 and cfg.updates_per_batch > 1:
                    # from the trainer itself before any update: the ratio is 1 at the first
                    old_logprobs[c], rollout_weights[c] = lp, rw
                if update == 0 and "rollout_is_mean" in m:
                    share = m["num_tokens"] / total_tokens
                    for key in ("rollout_is_mean", "rollout_is_capped_frac"):
                        rollout[key] = rollout.get(key, 0.0) + m[key] * share
                    gap = m["rollout_logp_gap_max"]
                    rollout["rollout_logp_gap_max"] = max(
                        rollout.get("rollout_logp_gap_max", 0), gap
                    )
                loss.backward()
                loss_sum += m["loss"]
                kl_sum += m["kl"] * m["num_tokens"] / total_tokens
                del loss, lp, rw
                t_teacher += t_t
                t_student += _clock(self.device) - t0 - t_t
            t2 = _clock(self.device)
            params = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if torch.isfinite(grad_norm):
                self.optimizer.step()
                self.updates += 1
            else:
                self.optimizer.zero_grad(set_to_none=True)
                skipped += 1
            t_student += _clock(self.device) - t2
        if cfg.teacher_regularization == "ema" and skipped < cfg.updates_per_batch:
            self._update_teacher()
        self.model.eval()
        gn = float(grad_norm)
        metrics.update(
            loss=loss_sum,
            kl=kl_sum,
            grad_norm=gn if math.isfinite(gn) else float("nan"),
            skipped_nonfinite=float(skipped),
            time_teacher=t_teacher,
            time_student=t_student,
            **rollout,
        )
        if cfg.teacher_regularization == "ema":
            metrics["teacher_delta_ratio"] = self.teacher_delta_ratio()
        return metrics

    @on_model_thread
    @torch.no_grad()
    def teacher_delta_ratio(self) -> float:
        """||teacher delta|| / ||student delta|| over all adapted layers (a diagnostic of how far
        the EMA teacher lags: an EMA of the delta gives the rate's lag, one of the factors more)."""
        student = teacher = 0.0
        for name, layer in self._lora_layers():
            d = self._student_delta(layer).float()
            if self.teacher_delta:
                t = self.teacher_delta[name].float()
            else:
                name_t = self._teacher
                a, b = layer.lora_A[name_t].weight, layer.lora_B[name_t].weight
                t = b.float() @ a.float() * layer.scaling[name_t]
            student += float(d.square().sum())
            teacher += float(t.square().sum())
        return math.sqrt(teacher / student) if student > 0 else 0.0

    # ------------------------------------------------------------------ persistence
    @on_model_thread
    def save_adapter(self, path: str | Path) -> None:
        """The student as a standard PEFT adapter (adapter_config.json + safetensors) at `path`,
        loadable by PeftModel.from_pretrained and by vLLM. Written atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp), selected_adapters=[self._student])
        # peft saves a non-default adapter under a sub-folder named after it
        inner = tmp / self._student if (tmp / self._student).is_dir() else tmp
        if inner != tmp:
            final_tmp = path.with_name(path.name + ".tmp2")
            shutil.rmtree(final_tmp, ignore_errors=True)
            os.rename(inner, final_tmp)
            shutil.rmtree(tmp)
            tmp = final_tmp
        atomic_replace_dir(tmp, path)

    @on_model_thread
    def save_checkpoint(self, path: str | Path) -> None:
        """Everything the trainer needs to continue exactly: both adapters, the optimizer, its
        update count and settings, the RNG. (The solve loop's own state is the loop's file.)"""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, file in self._adapter_files():
            state = get_peft_model_state_dict(self.model, adapter_name=name)
            save_file({k: v.contiguous() for k, v in state.items()}, tmp / file)
        if self.teacher_delta:
            save_file(
                {k: v.contiguous() for k, v in self.teacher_delta.items()},
                tmp / "teacher_delta.safetensors",
            )
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "updates": self.updates,
                "cfg": self.cfg.model_dump(),
                "rng": rng_state(),
            },
            tmp / "trainer.pt",
        )
        atomic_replace_dir(tmp, path)

    def _adapter_files(self) -> list[tuple[str, str]]:
        """(adapter, checkpoint file) of the active slot: files named as slot 0's adapters."""
        pairs = [(self._student, f"{STUDENT}.safetensors")]
        if self._teacher in self.model.peft_config:
            pairs.append((self._teacher, f"{TEACHER}.safetensors"))
        return pairs

    @on_model_thread
    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by save_checkpoint."""
        path = Path(path)
        blob = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        self.reset(SDPOConfig.model_validate(blob["cfg"]))
        for name, file in self._adapter_files():
            state = load_file(path / file, device=str(self.device))
            set_peft_model_state_dict(self.model, state, adapter_name=name)
        if self.teacher_delta:
            saved = load_file(path / "teacher_delta.safetensors", device=str(self.device))
            for name in self.teacher_delta:
                self.teacher_delta[name].copy_(saved[name])
        self.model.set_adapter(self._student)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.updates = blob["updates"]
        set_rng_state(blob["rng"])


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
