"""The `hf` engine: in-process transformers generation on the trainer's own model.

It samples from the live student adapter, so "loading" a new adapter version costs nothing:
the weights the trainer just updated are the weights it generates with.
Several problems on one model (sdpo_core/slots.py): each slot has its own `HFEngine`, and they
share one `HFGenerator`, which runs the calls of every slot waiting for the model together:
the first caller waits for the model, the ones that arrive meanwhile join it, and it makes one
generate call with each row on its own slot's adapter (PEFT's mixed-adapter batches). Before
it runs, it lets the problems queued for the model (training, exporting) go first: generation
and training share the one device, so nothing overlaps, and a problem that generated alone
while another trained would keep the two out of step for the rest of their runs, every call a
batch of one. Lock-step rounds (one batched generate call, then each problem's update) do the
same work with one generate call per round.
Each completion carries the sampler's temperature-1 log-probs of its tokens, as vLLM's do, for
the trainer's rollout correction (sdpo.rollout_is): here they come from the same weights, so
the weights are 1 up to the numerics of cached generation (measured: within 1e-3).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from sdpo_core.model_thread import on_model_thread
from sdpo_core.slots import PhaseClock, let_queued_go_first
from sdpo_core.trainer import SDPOTrainer
from sdpo_core.types import Completion, SamplingParams


class _LogProbRecorder(LogitsProcessor):
    """The raw (temperature-1) log-prob of each sampled token, kept as one [n] tensor per step.

    Called with each step's raw logits (it runs before the sampling warpers, and the engine's
    generation config enables no other processor); the token sampled from them shows up as
    the last input id of the next call. `output_logits` would instead keep every step's
    [n, V] logits: n x L x V floats, 80 GB for 16 x 8192 tokens at a 151,936 vocabulary.
    """

    def __init__(self) -> None:
        self.logp: torch.Tensor | None = None  # the previous step's log-softmax [n, V]
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if self.logp is not None:
            self.steps.append(self.logp.gather(-1, input_ids[:, -1:])[:, 0])
        self.logp = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def result(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[n, L] log-probs of the L generated tokens (the last one's from the last logits)."""
        if new_tokens.shape[1] > len(self.steps):
            self.steps.append(self.logp.gather(-1, new_tokens[:, -1:])[:, 0])
        return torch.stack(self.steps, dim=1)


@dataclass
class _Request:
    slot: int
    prompts: list[list[int]]
    sampling: SamplingParams
    done: threading.Event = field(default_factory=threading.Event)
    result: list[Completion] | None = None
    error: BaseException | None = None

    @property
    def key(self) -> tuple[object, ...]:  # requests that can share one generate call
        s = self.sampling
        return (s.max_new_tokens, s.temperature, s.top_p, s.seed)


class HFGenerator:
    """Generation on the trainer's model for every slot (see the module docstring)."""

    def __init__(
        self,
        trainer: SDPOTrainer,
        *,
        max_batch: int = 64,
        max_yields: int = 256,
        phases: PhaseClock | None = None,
    ) -> None:
        self.trainer = trainer
        self.phases = phases or PhaseClock()  # the time its generate calls run
        self.max_batch = max_batch
        self.max_yields = max_yields
        self._lock = threading.Lock()
        self._queue: list[_Request] = []
        self._leader = False  # a caller is waiting for the model to run the queue
        self.calls = 0  # generate calls made (a diagnostic of how much was batched)

    def submit(
        self, slot: int, prompts: list[list[int]], sampling: SamplingParams
    ) -> list[Completion]:
        """One completion of each prompt, sampled from slot `slot`'s adapter."""
        request = _Request(slot, prompts, sampling)
        with self._lock:
            self._queue.append(request)
            lead, self._leader = not self._leader, True
        if lead:
            lock = self.trainer.lock
            lock.acquire()
            try:
                # problems queued for the model are in their update; each asks to generate
                # right after it and joins this call if it runs after them
                let_queued_go_first(lock, self.max_yields)
                with self._lock:
                    batch, self._queue, self._leader = self._queue, [], False
                with self.phases.track("generation"):
                    self._run(batch)
            finally:
                lock.release()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    @on_model_thread
    def _run(self, batch: list[_Request]) -> None:
        groups: dict[tuple[object, ...], list[_Request]] = {}
        for r in batch:
            groups.setdefault(r.key, []).append(r)
        for group in groups.values():
            try:
                self._run_group(group)
            except Exception as exc:
                if len(group) == 1:
                    group[0].error = exc
                else:  # find whose request it was: the others go on
                    for r in group:
                        try:
                            self._run_group([r])
                        except Exception as one:
                            r.error = one
            finally:
                for r in group:
                    r.done.set()

    def _run_group(self, group: list[_Request]) -> None:
        """One generate call per `max_batch` rows over the group's prompts."""
        trainer = self.trainer
        trainer.activate(group[0].slot)  # its RNG samples; with one slot, its adapter serves
        rows = [(r, p) for r in group for p in r.prompts]
        slots = {r.slot for r in group}
        out: list[Completion] = []
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start : start + self.max_batch]
            names = None
            if len(slots) > 1:
                names = [trainer.slots[r.slot].student for r, _ in chunk]
            out.extend(self._generate([p for _, p in chunk], group[0].sampling, names))
            self.calls += 1
        at = 0
        for r in group:
            r.result, at = out[at : at + len(r.prompts)], at + len(r.prompts)

    @torch.no_grad()
    def _generate(
        self, prompts: list[list[int]], sampling: SamplingParams, adapters: list[str] | None
    ) -> list[Completion]:
        """One completion per prompt; prompts of different lengths are left-padded (the
        attention mask hides the padding, and positions count from each row's first token).
        `adapters`: each row's adapter (None: the active one)."""
        model = self.trainer.model if self.trainer.model is not None else self.trainer.base
        tok = self.trainer.tokenizer
        model.eval()
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)  # [n, width]
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            attention[i, width - len(p) :] = 1
        ids, attention = ids.to(self.trainer.device), attention.to(self.trainer.device)
        eos = tok.eos_token_id
        # a config of its own: the checkpoint's generation_config.json (repetition penalty,
        # top_k, ...) must not change what is sampled or what the recorder sees
        config = GenerationConfig(
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        recorder = _LogProbRecorder()
        extra = {"adapter_names": adapters} if adapters is not None else {}
        sequences = model.generate(
            input_ids=ids,
            attention_mask=attention,
            generation_config=config,
            logits_processor=LogitsProcessorList([recorder]),
            **extra,
        )
        new = sequences[:, ids.shape[1] :]  # [n, L]
        logp = recorder.result(new)  # [n, L]
        completions = []
        for row, row_logp in zip(new.tolist(), logp.tolist(), strict=True):
            length = row.index(eos) + 1 if eos in row else len(row)
            finish = "stop" if eos in row else "length"
            text = tok.decode(row[:length], skip_special_tokens=True)
            completions.append(Completion(text, row[:length], row_logp[:length], finish))
        return completions


class HFEngine:
    """One slot's view of the in-process generator."""

    name = "hf"
    times_itself = True

    def __init__(
        self,
        trainer: SDPOTrainer,
        *,
        max_batch: int = 64,
        slot: int = 0,
        generator: HFGenerator | None = None,
        phases: PhaseClock | None = None,
    ) -> None:
        self.trainer = trainer
        self.slot = slot
        self.generator = generator or HFGenerator(trainer, max_batch=max_batch, phases=phases)
        self.adapter_version = 0

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> list[Completion]:
        return self.generator.submit(self.slot, [prompt_ids] * sampling.n, sampling)

    @torch.no_grad()
    def generate_many(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        return self.generator.submit(self.slot, prompts, sampling)

    def for_slot(self, slot: int) -> HFEngine:
        """The engine of another slot, sharing this one's generator."""
        return HFEngine(self.trainer, slot=slot, generator=self.generator)

    def context_window(self) -> int | None:
        return None  # it generates with the trainer's own model

    def load_adapter(self, path: str, version: int) -> None:
        # The trainer's student adapter already holds these weights.
        self.adapter_version = version

    def serve_base(self) -> None:
        # trainer.reset starts the student adapter at zero: the base model
        self.adapter_version = 0

    def close(self) -> None:
        pass
