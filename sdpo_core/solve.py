"""The test-time SDPO loop: sample, verify, build self-teachers, update the LoRA, swap, repeat.

Checkpoints (in `checkpoint_dir`) make a run resumable with every attempt counted once:
- ckpt/NNNNNN/    one complete checkpoint per save: state.pt (the loop's counters, RNG and,
                  after generation, the pending rollout batch) and trainer/ (adapters,
                  optimizer, RNG as of the last update; hard links to the previous save's
                  files when no update happened in between).
- CURRENT         the name of the checkpoint to resume from, replaced atomically: a crash
                  leaves either the old or the new checkpoint current, never a mix.
- adapters/vN/    each adapter version the engine loads (the last two are kept).
- adapter/        the latest student adapter in PEFT format (what users download).
- best_adapter/   the adapter version that sampled the best attempt (hard links), with
                  best.json (attempt, score, adapter_version); version 0, the base model,
                  is best.json alone (there is no adapter to give).
Per step: generate + verify -> save (pending) -> best_adapter/ (a new best) -> attempt
events -> update -> adapter/ -> save (trainer, no pending) -> step event. After a crash, a
pending batch is trained on rather than sampled again (its best attempt taken again), and
its attempt events are emitted again with the same indices and content (consumers drop
indices they have).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from sdpo_core.best_adapter import BEST_ADAPTER_DIR, BEST_ADAPTER_INFO
from sdpo_core.chat import strip_thinking
from sdpo_core.config import SDPOConfig
from sdpo_core.contract import (
    AttemptPayload,
    ExhaustedPayload,
    FailedPayload,
    SolvedPayload,
    StepPayload,
)
from sdpo_core.methods import conversation_prompt
from sdpo_core.problem import ProblemSpec
from sdpo_core.runtime import Runtime
from sdpo_core.teacher import Demonstration, build_teacher_contexts, remember_feedback
from sdpo_core.trainer import (
    RolloutBatch,
    SDPOTrainer,
    atomic_replace_dir,
    rng_state,
    set_rng_state,
)
from sdpo_core.types import Completion, SamplingParams, SolveEvent, SolveResult, Verdict
from sdpo_core.verifiers import Verifier
from sdpo_core.verifiers.base import truncated_attempt

EventCallback = Callable[[SolveEvent], None]


@dataclasses.dataclass
class Pending:
    """A rollout batch that was sampled and verified but not yet trained on."""

    step: int
    first_index: int
    completions: list[Completion]
    verdicts: list[Verdict]
    time_generate: float
    time_verify: float


@dataclasses.dataclass
class LoopState:
    attempts: int = 0
    steps: int = 0
    adapter_version: int = 0
    best_score: float = 0.0
    best_attempt: int | None = None  # the best attempt so far: its index and text
    best_text: str | None = None
    best_passed: bool = False
    best_adapter_version: int | None = None  # the adapter that sampled the best attempt
    seconds: float = 0.0  # wall time spent before this run (resumed runs)
    pending: Pending | None = None
    feedback_pool: list[str] = dataclasses.field(default_factory=list)  # distinct, oldest first
    nonfinite_steps: int = 0  # steps whose every update was skipped (non-finite gradient norm)
    # multi_turn: each conversation's feedback so far, oldest first (sdpo_core/methods.py)
    conversations: list[list[str]] = dataclasses.field(default_factory=list)
    result: dict[str, Any] | None = None  # set once the problem is finished

    def to_blob(self) -> dict[str, Any]:
        blob = dataclasses.asdict(self)
        blob["rng"] = rng_state()
        return blob

    @classmethod
    def from_blob(cls, blob: dict[str, Any]) -> LoopState:
        pending = blob.get("pending")
        if pending is not None:
            pending = Pending(
                **{
                    **pending,
                    "completions": [Completion(**c) for c in pending["completions"]],
                    "verdicts": [Verdict(**v) for v in pending["verdicts"]],
                }
            )
        fields = {f.name for f in dataclasses.fields(cls)} - {"pending"}
        return cls(pending=pending, **{k: blob[k] for k in fields if k in blob})


def latest_adapter_dir(checkpoint_dir: str | Path) -> Path | None:
    """The latest adapter (PEFT format) a run has written, or None before the first step."""
    path = Path(checkpoint_dir) / "adapter"
    return path if (path / "adapter_config.json").exists() else None


class _Checkpoints:
    """One checkpoint directory per save, and a pointer (CURRENT) swapped atomically."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        if root is not None:
            (root / "ckpt").mkdir(parents=True, exist_ok=True)

    def _current(self) -> Path | None:
        assert self.root is not None
        try:
            name = (self.root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        return self.root / "ckpt" / name

    def save(self, state: LoopState, runtime: Runtime | None = None) -> None:
        """Write a complete checkpoint of `state`; with `runtime`, the trainer as it is now,
        else the trainer files of the current checkpoint (hard links), then point at it."""
        if self.root is None:
            return
        current = self._current()
        number = int(current.name) + 1 if current is not None else 1
        final = self.root / "ckpt" / f"{number:06d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(state.to_blob(), tmp / "state.pt")
        if runtime is not None:
            runtime.trainer.save_checkpoint(tmp / "trainer")
        elif current is not None and (current / "trainer").is_dir():
            (tmp / "trainer").mkdir()
            for f in (current / "trainer").iterdir():
                try:
                    os.link(f, tmp / "trainer" / f.name)
                except OSError:  # a file system without hard links
                    shutil.copy2(f, tmp / "trainer" / f.name)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = self.root / "CURRENT.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, self.root / "CURRENT")
        for old in (self.root / "ckpt").iterdir():
            if old.name != final.name:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, runtime: Runtime) -> LoopState | None:
        """Restore the current checkpoint, or None when there is none."""
        if self.root is None:
            return None
        current = self._current()
        if current is None:
            return None
        state_file, trainer_dir = current / "state.pt", current / "trainer"
        try:
            blob = torch.load(state_file, weights_only=False)
        except Exception as exc:
            raise RuntimeError(f"checkpoint {state_file} is unreadable: {exc}") from exc
        if (trainer_dir / "trainer.pt").exists():
            try:
                runtime.trainer.load_checkpoint(trainer_dir)
            except Exception as exc:
                raise RuntimeError(f"checkpoint {trainer_dir} is unreadable: {exc}") from exc
        state = LoopState.from_blob(blob)
        set_rng_state(blob["rng"])  # the RNG as of this save (after the trainer's)
        return state


def solve(
    problem: ProblemSpec,
    runtime: Runtime,
    *,
    on_event: EventCallback | None = None,
    checkpoint_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SolveResult:
    """Solve one problem by test-time SDPO. Resumes from `checkpoint_dir` if it holds a run.

    should_stop() is polled between phases; when it says so the run returns status "stopped"
    (its caller knows whether that is a cancel or a shutdown) and emits no terminal event.
    `clock` measures the wall-clock budget (the service's stands still while Redis is away).
    """
    emit = on_event or (lambda _e: None)
    stop = should_stop or (lambda: False)
    cfg = problem.sdpo_config(runtime.defaults)  # the model's defaults, then the problem's
    budget = problem.budget
    trainer, engine = runtime.trainer, runtime.engine
    ckpt = _Checkpoints(Path(checkpoint_dir) if checkpoint_dir else None)
    state = LoopState()

    try:
        verifier = problem.verifier.build()
        trainer.reset(cfg)
        engine.serve_base()  # not the adapter of the problem before this one
        state = ckpt.load(runtime) or state
        if state.result is not None:  # finished before a crash: report it again
            return _finish(state, emit, SolveResult(**state.result))
        if state.adapter_version and checkpoint_dir is not None:  # serve what was trained
            version_dir = _export_adapter(trainer, Path(checkpoint_dir), state.adapter_version)
            engine.load_adapter(str(version_dir), state.adapter_version)
        prompt_ids = trainer.encode_chat(problem.prompt)
        check_prompt_fits(runtime, len(prompt_ids), cfg.max_new_tokens)
        if problem.method == "multi_turn" and not state.conversations:
            state.conversations = [[] for _ in range(cfg.samples_per_step)]
        started = clock() - state.seconds

        def elapsed() -> float:
            return clock() - started

        while True:
            if stop():
                return _stopped(state, elapsed())
            if state.pending is None:
                left = budget.max_attempts - state.attempts
                if left <= 0 or elapsed() >= budget.max_seconds:
                    reason = "max_attempts" if left <= 0 else "max_seconds"
                    return _exhausted(state, reason, elapsed(), ckpt, emit)
                n = min(left, cfg.samples_per_step)
                rows = (
                    _conversation_prompts(state, runtime, problem.prompt, cfg, n)
                    if problem.method == "multi_turn"
                    else None
                )
                state.pending = _rollout(state, runtime, verifier, prompt_ids, cfg, n, rows)
                state.attempts += len(state.pending.completions)
                state.seconds = elapsed()
                ckpt.save(state)
            pending = state.pending
            earlier_best = _demonstration(state)  # before this batch (best_so_far's candidate)
            _track_best(state, pending, checkpoint_dir)  # before the events announce it
            for i, (c, v) in enumerate(zip(pending.completions, pending.verdicts, strict=True)):
                emit(
                    AttemptPayload(
                        index=pending.first_index + i,
                        step=pending.step,
                        text=c.text,
                        verdict=v.to_dict(),
                        num_tokens=len(c.token_ids),
                    )
                )
            objective = problem.objective
            winner = next((i for i, v in enumerate(pending.verdicts) if objective.reached(v)), None)
            if winner is not None:
                return _solved(state, pending, winner, elapsed(), ckpt, emit)
            if state.attempts >= budget.max_attempts:  # an update now would never be used
                state.pending = None
                return _exhausted(state, "max_attempts", elapsed(), ckpt, emit)
            if stop():
                return _stopped(state, elapsed())

            if problem.method != "sdpo":  # a baseline: no training, the base model samples
                if problem.method == "multi_turn":
                    limit = cfg.max_feedback_chars or None
                    for i, v in enumerate(pending.verdicts):  # the first n conversations
                        state.conversations[i].append(v.feedback[:limit])
                state.pending = None
                state.seconds = elapsed()
                ckpt.save(state)
                continue
            metrics = _update(
                state,
                pending,
                runtime,
                problem.prompt,
                prompt_ids,
                cfg,
                checkpoint_dir,
                earlier_best,
            )
            state.pending = None
            state.seconds = elapsed()
            ckpt.save(state, runtime)
            emit(
                StepPayload(
                    step=state.steps,
                    attempts=state.attempts,
                    adapter_version=state.adapter_version,
                    metrics=metrics,
                )
            )
    except Exception as exc:  # reported as a failed run, never swallowed silently
        error = f"{type(exc).__name__}: {exc}"
        emit(FailedPayload(error=error, attempts=state.attempts, steps=state.steps))
        return _result(state, "failed", state.seconds, error=error)


def _rollout(
    state: LoopState,
    runtime: Runtime,
    verifier: Verifier,
    prompt_ids: list[int],
    cfg: SDPOConfig,
    n: int,
    rows: list[list[int]] | None,
) -> Pending:
    """Sample `n` attempts of the prompt (or one of each prompt in `rows`) and verify them
    (with the other problems in flight, in lock-step rounds when the runtime has them)."""
    t0 = time.perf_counter()
    engine, phases = runtime.engine, runtime.phases
    sampling = SamplingParams(
        n=n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p
    )

    def generate() -> list[Completion]:  # timed without the wait for a round
        with nullcontext() if engine.times_itself else phases.track("generation"):
            if rows is None:
                return engine.generate(prompt_ids, sampling)
            return engine.generate_many(rows, sampling)

    completions = runtime.rounds.run(generate) if runtime.rounds else generate()
    t1 = time.perf_counter()
    with phases.track("verification"):
        verdicts = verifier.verify_batch([strip_thinking(c.text) for c in completions])
    verdicts = [  # cut at max_new_tokens with no answer yet: the teacher is told so
        truncated_attempt(v) if c.finish_reason == "length" else v
        for c, v in zip(completions, verdicts, strict=True)
    ]
    t2 = time.perf_counter()
    return Pending(state.steps, state.attempts + 1, completions, verdicts, t1 - t0, t2 - t1)


def _conversation_prompts(
    state: LoopState, runtime: Runtime, prompt: str, cfg: SDPOConfig, n: int
) -> list[list[int]]:
    """multi_turn: the next prompt of each of the first `n` conversations, fitted to the
    smaller of the model's and the engine's windows minus the response length."""
    windows = [runtime.trainer.context_window, runtime.engine.context_window()]
    known = [w for w in windows if w is not None]
    window = (min(known) if known else 1 << 30) - cfg.max_new_tokens
    encode = runtime.trainer.encode_chat
    return [
        conversation_prompt(encode, prompt, cfg, feedbacks, window)
        for feedbacks in state.conversations[:n]
    ]


def _update(
    state: LoopState,
    pending: Pending,
    runtime: Runtime,
    prompt: str,
    prompt_ids: list[int],
    cfg: SDPOConfig,
    checkpoint_dir: str | Path | None,
    earlier_best: Demonstration | None = None,
) -> dict[str, float]:
    """One SDPO update on the pending batch, then export and swap the adapter."""
    trainer, engine = runtime.trainer, runtime.engine
    texts = [strip_thinking(c.text) for c in pending.completions]  # a solution is its answer
    if cfg.feedback_memory:
        state.feedback_pool = remember_feedback(state.feedback_pool, pending.verdicts)
    contexts = build_teacher_contexts(
        prompt, texts, pending.verdicts, cfg, state.feedback_pool, earlier_best
    )
    batch = RolloutBatch(
        prompt_ids=prompt_ids,
        response_ids=[c.token_ids for c in pending.completions],
        teacher_prompt_ids=[None if t.masked else trainer.encode_chat(t.message) for t in contexts],
        rollout_logprobs=[c.logprobs for c in pending.completions],
    )
    check_teacher_fits(trainer, batch, cfg)
    phases = runtime.phases

    def timed(phase: str) -> AbstractContextManager[None]:  # a SlotTrainer times its own calls
        return nullcontext() if trainer.times_itself else phases.track(phase)

    with timed("training"):
        metrics = trainer.step(batch)
    state.steps += 1
    if metrics["skipped_nonfinite"] >= cfg.updates_per_batch:
        state.nonfinite_steps += 1
    state.adapter_version += 1
    t0 = time.perf_counter()
    version_dir = None
    if checkpoint_dir is not None:
        root = Path(checkpoint_dir)
        with timed("export"):
            version_dir = _save_adapter_version(trainer, root, state.adapter_version)
        with phases.track("export"):
            _publish_adapter(root, version_dir)
    elif engine.name != "hf":
        raise ValueError(f"the {engine.name} engine needs a checkpoint_dir to export adapters to")
    t1 = time.perf_counter()
    with phases.track("export"):
        engine.load_adapter(str(version_dir), state.adapter_version)
    t2 = time.perf_counter()
    if checkpoint_dir is not None:
        _prune_adapters(Path(checkpoint_dir), keep_from=state.adapter_version - 1)
    metrics.update(
        time_generate=pending.time_generate,
        time_verify=pending.time_verify,
        time_export=t1 - t0,
        time_swap=t2 - t1,
        pass_rate=sum(v.passed for v in pending.verdicts) / len(pending.verdicts),
        mean_score=sum(v.score for v in pending.verdicts) / len(pending.verdicts),
    )
    return metrics


class ContextWindowError(ValueError):
    """A prompt plus its response would not fit the model's context window."""


def check_prompt_fits(runtime: Runtime, n_prompt: int, max_new_tokens: int) -> None:
    """The prompt plus sdpo.max_new_tokens must fit the trainer's model and the engine (vLLM's
    max_model_len): checked before the first attempt, not found out after an hour of rollouts."""
    limits = [(runtime.trainer.context_window, "max_position_embeddings of the model")]
    limits.append(
        (runtime.engine.context_window(), f"max_model_len of the {runtime.engine.name} server")
    )
    for window, source in limits:
        if window is not None and n_prompt + max_new_tokens > window:
            raise ContextWindowError(
                f"sdpo.max_new_tokens ({max_new_tokens}) + the prompt's {n_prompt} tokens "
                f"exceed the context window of {window} tokens ({source}); set "
                f"sdpo.max_new_tokens to at most {window - n_prompt} or use a model with a "
                "longer window"
            )


def check_teacher_fits(trainer: SDPOTrainer, batch: RolloutBatch, cfg: SDPOConfig) -> None:
    """Each teacher context (prompt + feedback) plus its sample's response must fit the model's
    window (the teacher scores the response after a longer prompt than the student's)."""
    window = trainer.context_window
    if window is None:
        return
    for i, (t, r) in enumerate(zip(batch.teacher_prompt_ids, batch.response_ids, strict=True)):
        if t is not None and len(t) + len(r) > window:
            raise ContextWindowError(
                f"the teacher context of sample {i + 1} ({len(t)} tokens: prompt + feedback, "
                f"sdpo.max_feedback_chars={cfg.max_feedback_chars}, "
                f"sdpo.feedback_memory={cfg.feedback_memory}) + its {len(r)}-token response "
                f"exceed the model's context window of {window} tokens "
                "(max_position_embeddings); lower sdpo.max_new_tokens or sdpo.max_feedback_chars"
            )


def _export_adapter(trainer: SDPOTrainer, root: Path, version: int) -> Path:
    """Save the student as adapters/v{version} and publish it as adapter/."""
    version_dir = _save_adapter_version(trainer, root, version)
    _publish_adapter(root, version_dir)
    return version_dir


def _save_adapter_version(trainer: SDPOTrainer, root: Path, version: int) -> Path:
    """Save the student as adapters/v{version}: what the engine loads (a server may re-read
    it later, so each version keeps its own directory)."""
    version_dir = root / "adapters" / f"v{version}"
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_adapter(version_dir)
    return version_dir


def _publish_adapter(root: Path, version_dir: Path) -> None:
    """Publish a saved version as adapter/ (hard links, swapped in atomically)."""
    tmp = root / "adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(version_dir, tmp, copy_function=os.link)
    atomic_replace_dir(tmp, root / "adapter")


def _demonstration(state: LoopState) -> Demonstration | None:
    """The best attempt so far as a teacher may be shown it, or None before the first."""
    if state.best_text is None:
        return None
    return Demonstration(strip_thinking(state.best_text), state.best_score, state.best_passed)


def _track_best(state: LoopState, pending: Pending, checkpoint_dir: str | Path | None) -> None:
    """Take the batch's best attempt if it beats the best so far (the first of equals), and
    keep the adapter version that sampled it as best_adapter/ (the batch was sampled from
    the current version, which adapters/ still holds)."""
    improved = False
    for i, (c, v) in enumerate(zip(pending.completions, pending.verdicts, strict=True)):
        if state.best_attempt is None or v.score > state.best_score:
            state.best_score, state.best_attempt = v.score, pending.first_index + i
            state.best_text, state.best_passed = c.text, v.passed
            improved = True
    if not improved:
        return
    state.best_adapter_version = state.adapter_version
    if checkpoint_dir is None:
        return
    root = Path(checkpoint_dir)
    tmp = root / f"{BEST_ADAPTER_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    version = state.adapter_version
    if version:
        shutil.copytree(root / "adapters" / f"v{version}", tmp, copy_function=os.link)
    else:  # the base model sampled it: no adapter, only the record saying so
        tmp.mkdir(parents=True)
    info = {"attempt": state.best_attempt, "score": state.best_score, "adapter_version": version}
    (tmp / BEST_ADAPTER_INFO).write_text(json.dumps(info) + "\n")
    atomic_replace_dir(tmp, root / BEST_ADAPTER_DIR)


def _prune_adapters(root: Path, keep_from: int) -> None:
    """Remove version directories older than `keep_from` (the engine has swapped past them)."""
    for path in (root / "adapters").glob("v*"):
        if path.name[1:].isdigit() and int(path.name[1:]) < keep_from:
            shutil.rmtree(path, ignore_errors=True)


def _result(state: LoopState, status: str, seconds: float, **kw: Any) -> SolveResult:
    return SolveResult(
        status=status,
        solved=status == "solved",
        attempts=state.attempts,
        first_pass_attempt=kw.get("first_pass_attempt"),
        solution=kw.get("solution"),
        score=kw.get("score"),
        best_score=state.best_score,
        steps=state.steps,
        seconds=seconds,
        adapter_version=state.adapter_version,
        error=kw.get("error"),
        best_attempt=state.best_attempt,
        best_solution=state.best_text,
    )


def _stopped(state: LoopState, seconds: float) -> SolveResult:
    return _result(state, "stopped", seconds)


def _solved(
    state: LoopState,
    pending: Pending,
    winner: int,
    seconds: float,
    ckpt: _Checkpoints,
    emit: EventCallback,
) -> SolveResult:
    result = _result(
        state,
        "solved",
        seconds,
        first_pass_attempt=pending.first_index + winner,
        solution=pending.completions[winner].text,
        score=pending.verdicts[winner].score,
    )
    state.pending, state.seconds, state.result = None, seconds, result.to_dict()
    ckpt.save(state)
    return _finish(state, emit, result)


def _exhausted(
    state: LoopState, reason: str, seconds: float, ckpt: _Checkpoints, emit: EventCallback
) -> SolveResult:
    """The budget is spent: exhausted, or failed when no step ever updated the adapter."""
    if state.steps and state.nonfinite_steps == state.steps:
        error = (
            f"every SDPO step ({state.steps}) had a non-finite gradient norm and was skipped, "
            "so the adapter never changed (the attempts were the base model's): lower "
            "sdpo.lr, or run the model in bfloat16 or float32 rather than float16"
        )
        result = _result(state, "failed", seconds, error=error)
    else:
        result = _result(state, "exhausted", seconds, error=reason)
    state.seconds, state.result = seconds, result.to_dict()
    ckpt.save(state)
    return _finish(state, emit, result)


def _finish(state: LoopState, emit: EventCallback, result: SolveResult) -> SolveResult:
    """Emit the terminal event of a finished run (again, after a resume)."""
    if result.status == "failed":
        emit(FailedPayload(error=result.error, attempts=result.attempts, steps=result.steps))
    elif result.status == "solved":
        emit(
            SolvedPayload(
                attempt_index=result.first_pass_attempt,
                solution=result.solution,
                attempts=result.attempts,
                steps=result.steps,
                seconds=result.seconds,
                score=result.score,
            )
        )
    else:
        emit(
            ExhaustedPayload(
                reason=result.error,
                attempts=result.attempts,
                steps=result.steps,
                seconds=result.seconds,
                best_score=result.best_score,
                best_attempt=result.best_attempt,
                best_solution=result.best_solution,
            )
        )
    return result
