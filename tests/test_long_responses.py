"""Long responses end to end: `max_new_tokens` 8192 through the whole loop on both engines.

A tiny random-weight Qwen3 (sdpo_core/toy/families.py) with a window of 8192 + 512 positions
and an output head that practically never emits EOS, so every response really is 8192 tokens
(the attempt events' token counts say so, not only that the run ended). One rollout batch of
2 samples, then one SDPO step on them (teacher and student forward over 8k-token sequences,
the chunked loss, backward, EMA teacher, adapter export and, on vllm, the swap); the run is
stopped after that step. And a window too small for the request fails before any attempt,
with an error naming the setting and the limit.

Speed (2 busy cores): the model decodes with one torch thread. At two threads on a machine
whose other jobs keep both cores busy, the threads wait on each other at every tiny op:
hf generation of 2 x 8192 tokens took 378 s, at one thread 39 s (same machine, same load).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sdpo_core.contract import AttemptPayload, FailedPayload, StepPayload
from sdpo_core.problem import parse_problem
from sdpo_core.runtime import load_runtime
from sdpo_core.solve import solve
from sdpo_core.toy import make_problem
from sdpo_core.toy.families import build_tiny_model

pytestmark = pytest.mark.slow

LONG = 8192
SAMPLES = 2


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("long") / "model"
    return build_tiny_model("qwen3", out, max_positions=LONG + 512, never_stop=True)


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def long_problem(max_new_tokens: int = LONG) -> dict:
    data = make_problem(9003, 6, max_attempts=64)
    data["sdpo"].update(samples_per_step=SAMPLES, max_new_tokens=max_new_tokens, lora_rank=8)
    return data


@pytest.mark.parametrize("engine", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_8192_token_responses_through_the_loop(
    engine: str, long_model: Path, tmp_path: Path, one_thread: None
) -> None:
    rt = load_runtime(long_model, engine=engine, device="cpu", max_lora_rank=8)
    try:
        # the managed vLLM server's max_model_len is the model's window (hf: the trainer's)
        assert rt.engine.context_window() == (LONG + 512 if engine == "vllm" else None)
        assert rt.trainer.context_window == LONG + 512
        events: list = []
        stepped = lambda: any(isinstance(e, StepPayload) for e in events)  # noqa: E731
        result = solve(
            parse_problem(long_problem()),
            rt,
            on_event=events.append,
            checkpoint_dir=tmp_path / "run",
            should_stop=stepped,
        )
        assert result.status == "stopped" and result.steps == 1, result.error
        attempts = [e for e in events if isinstance(e, AttemptPayload)]
        assert [a.num_tokens for a in attempts] == [LONG] * SAMPLES
        (step,) = [e for e in events if isinstance(e, StepPayload)]
        m = step.metrics
        print(
            f"\n{engine}: generate {m['time_generate']:.1f} s, teacher {m['time_teacher']:.1f} s, "
            f"student {m['time_student']:.1f} s, export {m['time_export']:.2f} s, "
            f"swap {m['time_swap']:.2f} s, loss {m['loss']:.3g}, grad norm {m['grad_norm']:.3g}"
        )
        # the step trained on every token of both long responses, through the chunked loss
        assert rt.trainer.chunked_loss
        assert m["masked_fraction"] == 0.0 and m["tokens"] == SAMPLES * LONG
        assert m["grad_norm"] > 0 and torch.isfinite(torch.tensor(m["loss"]))
        assert rt.engine.adapter_version == 1 == step.adapter_version
        assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    finally:
        rt.close()


def test_a_window_too_small_fails_before_any_attempt(long_model: Path, tmp_path: Path) -> None:
    """One token over the model's window: the run fails at once, naming the field and the
    limit (a vLLM server with a smaller --max-model-len is named the same way)."""
    rt = load_runtime(long_model, engine="hf", device="cpu")
    try:
        prompt_len = len(rt.trainer.encode_chat(parse_problem(long_problem()).prompt))
        too_long = LONG + 512 - prompt_len + 1
        events: list = []
        result = solve(parse_problem(long_problem(too_long)), rt, on_event=events.append)
    finally:
        rt.close()
    assert result.status == "failed" and result.attempts == 0
    assert result.error.startswith("ContextWindowError: sdpo.max_new_tokens")
    assert f"context window of {LONG + 512} tokens (max_position_embeddings" in result.error
    assert f"at most {too_long - 1}" in result.error
    assert [type(e) for e in events] == [FailedPayload]


def test_hf_engine_logprobs_are_the_raw_logprobs_of_each_sampled_token(
    tmp_path: Path, one_thread: None
) -> None:
    """The hf engine records each step's log-probs instead of keeping every step's logits
    (n x L x V floats; 80 GB at 16 x 8192 tokens and a 151,936 vocabulary). They are the
    temperature-1 log-probs of the sampled tokens, whatever the sampling temperature/top_p,
    with samples that stop at EOS at different lengths and others cut at the limit."""
    from sdpo_core.config import SDPOConfig
    from sdpo_core.engines.hf import HFEngine
    from sdpo_core.trainer import SDPOTrainer
    from sdpo_core.types import SamplingParams

    trainer = SDPOTrainer(build_tiny_model("llama", tmp_path / "model"), device="cpu")
    trainer.reset(SDPOConfig())
    prompt = trainer.encode_chat("Find the hidden table.")
    sampling = SamplingParams(n=6, max_new_tokens=600, temperature=0.8, top_p=0.95)
    completions = HFEngine(trainer).generate(prompt, sampling)
    finish = {c.finish_reason for c in completions}
    assert finish == {"stop", "length"}, [len(c.token_ids) for c in completions]
    assert len({len(c.token_ids) for c in completions}) > 2
    for c in completions:
        forced = trainer.sequence_logprobs(prompt, c.token_ids)
        assert max(abs(a - b) for a, b in zip(c.logprobs, forced, strict=True)) < 1e-4


def test_a_teacher_context_over_the_window_is_named(long_model: Path) -> None:
    """The teacher reads a longer prompt (feedback) than the student: a response that fits the
    student's window may not fit the teacher's; the step says which sample and what to lower."""
    from sdpo_core.config import SDPOConfig
    from sdpo_core.solve import ContextWindowError, check_teacher_fits
    from sdpo_core.trainer import RolloutBatch, SDPOTrainer

    trainer = SDPOTrainer(long_model, device="cpu")
    fits = RolloutBatch([1] * 40, [[5] * LONG, [5] * LONG], [[1] * 512, None])
    check_teacher_fits(trainer, fits, SDPOConfig())
    over = RolloutBatch([1] * 40, [[5] * LONG, [5] * LONG], [None, [1] * 513])
    with pytest.raises(ContextWindowError) as info:
        check_teacher_fits(trainer, over, SDPOConfig())
    assert str(info.value).startswith("the teacher context of sample 2 (513 tokens")
    assert f"context window of {LONG + 512} tokens" in str(info.value)
    assert "sdpo.max_feedback_chars" in str(info.value)
