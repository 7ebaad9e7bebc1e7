"""The LoRA SDPO trainer on the bundled model: updates, teachers, adapters, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from sdpo_core.config import SDPOConfig
from sdpo_core.teacher import render_reprompt
from sdpo_core.toy import make_problem
from sdpo_core.trainer import STUDENT, TEACHER, RolloutBatch

CFG = SDPOConfig(lr=1e-3, lora_rank=8, micro_batch_size=2, seed=3)


def make_batch(trainer, n: int = 4) -> RolloutBatch:
    """A batch whose teachers see feedback revealing the answer (a strong, real signal)."""
    problem = make_problem(7, 3)
    cases = problem["verifier"]["cases"]
    keys = list(cases)
    responses, teachers = [], []
    for i in range(n):
        wrong = " ".join(f"{k}={(int(cases[k]) + 1 + i) % 10}" for k in keys)
        responses.append(trainer.tokenizer(wrong, add_special_tokens=False)["input_ids"])
        fb = "\n\n".join(
            f"Wrong Answer\nInput: {k}\nExpected Output: {cases[k]}\nYour Output: x"
            for k in keys[:2]
        )
        teachers.append(
            trainer.encode_chat(render_reprompt(problem["prompt"], CFG, feedbacks=[fb]))
        )
    return RolloutBatch(trainer.encode_chat(problem["prompt"]), responses, teachers)


def student_params(trainer) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone() for n, p in trainer.model.named_parameters() if f".{STUDENT}." in n
    }


def test_step_reports_metrics_and_lowers_the_loss(runtime) -> None:
    trainer = runtime.trainer
    trainer.reset(CFG)
    batch = make_batch(trainer)
    first = trainer.step(batch)
    for key in (
        "loss",
        "kl",
        "grad_norm",
        "masked_fraction",
        "tokens",
        "time_teacher",
        "time_student",
    ):
        assert key in first
    assert first["loss"] > 0 and first["grad_norm"] > 0 and first["masked_fraction"] == 0.0
    losses = [trainer.step(batch)["loss"] for _ in range(5)]
    assert losses[-1] < first["loss"]


@pytest.mark.parametrize("ema_target", ["factors", "delta"])
def test_gradient_checkpointing_gives_the_same_step(runtime, ema_target: str) -> None:
    """Checkpointing (the default) recomputes activations in backward: on the model for real,
    and the step's loss and updated adapter equal those of a step without it."""
    results = {}
    for checkpointing in (True, False):
        cfg = CFG.merged({"gradient_checkpointing": checkpointing, "ema_target": ema_target})
        trainer = runtime.trainer
        trainer.reset(cfg)
        base = trainer.model.get_base_model()
        assert base.is_activation_checkpointing is checkpointing
        batch = make_batch(trainer, n=2)
        metrics = [trainer.step(batch) for _ in range(2)]
        results[checkpointing] = ([m["loss"] for m in metrics], student_params(trainer))
    (loss_on, params_on), (loss_off, params_off) = results[True], results[False]
    assert loss_on == pytest.approx(loss_off, rel=1e-5, abs=1e-7)
    for k in params_off:
        torch.testing.assert_close(params_on[k], params_off[k], atol=1e-6, rtol=1e-5)


def test_masked_samples_give_no_update(runtime) -> None:
    trainer = runtime.trainer
    trainer.reset(CFG)
    batch = make_batch(trainer)
    batch.teacher_prompt_ids = [None] * len(batch.response_ids)
    before = student_params(trainer)
    metrics = trainer.step(batch)
    assert metrics["masked_fraction"] == 1.0 and metrics["skipped"] == 1.0
    after = student_params(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_factors_ema_teacher_averages_a_and_b_separately(runtime) -> None:
    trainer = runtime.trainer
    trainer.reset(CFG.merged({"ema_target": "factors"}))
    named = dict(trainer.model.named_parameters())
    pairs = [(n, n.replace(f".{STUDENT}.", f".{TEACHER}.")) for n in named if f".{STUDENT}." in n]
    teacher_before = {t: named[t].detach().clone() for _, t in pairs}
    trainer.step(make_batch(trainer))
    moved = 0
    for s, t in pairs:
        expected = torch.lerp(teacher_before[t], named[s].detach(), CFG.ema_rate)
        torch.testing.assert_close(named[t].detach(), expected)
        moved += not torch.equal(named[t], teacher_before[t])
    assert moved > 0


def student_deltas(trainer) -> dict[str, torch.Tensor]:
    """Each adapted layer's student delta scaling·B·A, computed here from the factors."""
    out = {}
    for name, m in trainer.model.named_modules():
        if hasattr(m, "lora_A") and STUDENT in m.lora_A:
            a, b = m.lora_A[STUDENT].weight.detach(), m.lora_B[STUDENT].weight.detach()
            out[name] = b @ a * m.scaling[STUDENT]
    return out


def test_delta_ema_teacher_is_the_ema_of_the_students_weight_delta(runtime) -> None:
    """ema_target="delta": after k updates the teacher's delta is exactly
    sum_i rate (1-rate)^(k-i) delta_i, and its logits are those of base weights + that delta."""
    cfg = CFG.merged({"ema_target": "delta", "ema_rate": 0.3})
    trainer = runtime.trainer
    trainer.reset(cfg)
    assert TEACHER not in trainer.model.peft_config
    batch = make_batch(trainer, n=2)
    expected = {k: torch.zeros_like(v) for k, v in student_deltas(trainer).items()}
    for _ in range(3):
        trainer.step(batch)
        for k, d in student_deltas(trainer).items():
            expected[k] = (1 - 0.3) * expected[k] + 0.3 * d
    assert expected and set(trainer.teacher_delta) == set(expected)
    for k in expected:
        torch.testing.assert_close(trainer.teacher_delta[k], expected[k])
    assert any(float(d.abs().max()) > 0 for d in expected.values())
    ratio = trainer.teacher_delta_ratio()
    assert 0.0 < ratio < 1.0  # the teacher lags the student

    # the teacher's logits = a plain model whose adapted weights are base + EMA delta
    prompts, responses = batch.teacher_prompt_ids, batch.response_ids
    got = trainer._teacher_logits(prompts, responses)
    modules = dict(trainer.model.named_modules())
    originals = {k: modules[k].base_layer.weight.detach().clone() for k in expected}
    try:
        with torch.no_grad():
            for k, d in expected.items():
                modules[k].base_layer.weight += d
            with trainer.model.disable_adapter():
                merged = trainer._response_logits(prompts, responses)[0]
    finally:
        with torch.no_grad():
            for k, w in originals.items():
                modules[k].base_layer.weight.copy_(w)
    torch.testing.assert_close(got, merged, atol=1e-4, rtol=1e-4)


def test_trust_region_teacher_interpolates_reference_and_student(runtime) -> None:
    trainer = runtime.trainer
    cfg = CFG.merged({"teacher_regularization": "trust_region", "trust_region_alpha": 0.3})
    trainer.reset(cfg)
    batch = make_batch(trainer, n=2)
    trainer.step(batch)  # the student now differs from the reference
    prompts, responses = batch.teacher_prompt_ids, batch.response_ids
    with torch.no_grad(), trainer.model.disable_adapter():
        ref = trainer._response_logits(prompts, responses)[0]
    with torch.no_grad():
        cur = trainer._response_logits(prompts, responses)[0]
    assert not torch.allclose(ref, cur)
    torch.testing.assert_close(
        trainer._teacher_logits(prompts, responses), torch.lerp(ref, cur, 0.3)
    )
    assert TEACHER not in trainer.model.peft_config  # no second adapter needed


def test_teacher_entropy_gate_weighs_positions_where_the_teacher_is_unsure(runtime) -> None:
    """teacher_entropy_gate: positions where the teacher's entropy is at least the gate weigh
    unsure_weight; the step's loss is the paper's loss with exactly those weights."""
    from sdpo_core.loss import sdpo_loss

    trainer = runtime.trainer
    cfg = CFG.merged({"micro_batch_size": 4, "teacher_entropy_gate": 0.5, "unsure_weight": 0.2})
    trainer.reset(cfg)
    batch = make_batch(trainer)
    prompts = [batch.prompt_ids] * len(batch.response_ids)
    with torch.no_grad():
        s_logits, ids, mask = trainer._response_logits(prompts, batch.response_ids)
        t_logits = trainer._teacher_logits(batch.teacher_prompt_ids, batch.response_ids)
    lp = t_logits.float().log_softmax(-1)
    entropy = -(lp.exp() * lp).sum(-1)
    unsure = entropy >= 0.5
    assert unsure[mask].any() and (~unsure[mask]).any()  # the revealed keys: sure; others not
    weights = torch.where(unsure, 0.2, 1.0)
    kw = dict(top_k=cfg.top_k, alpha=cfg.alpha, add_tail=cfg.add_tail, is_clip=cfg.is_clip)
    want, _ = sdpo_loss(s_logits, t_logits, ids, mask, token_weights=weights, **kw)
    paper, _ = sdpo_loss(s_logits, t_logits, ids, mask, **kw)
    got = trainer.step(batch)["loss"]
    assert got == pytest.approx(want.item(), rel=1e-4)
    assert got < paper.item()

    trainer.reset(cfg.merged({"teacher_entropy_gate": 0.0, "unsure_weight": 0.0}))
    metrics = trainer.step(batch)  # every position is unsure: no signal at all
    assert metrics["loss"] == 0.0 and metrics["grad_norm"] == 0.0


def test_adapter_loads_in_peft_with_the_same_logprobs(
    runtime, toy_model_dir: Path, tmp_path
) -> None:
    trainer = runtime.trainer
    trainer.reset(CFG)
    batch = make_batch(trainer)
    for _ in range(3):
        trainer.step(batch)
    trainer.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(toy_model_dir)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    prompt, response = batch.prompt_ids, batch.response_ids[0]
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    theirs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]
    ours = torch.tensor(trainer.sequence_logprobs(prompt, response))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), trainer.model.disable_adapter():
        base_logits = trainer.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    assert not torch.allclose(base_logits, logits)  # the adapter is not a no-op


@pytest.mark.parametrize("regularization", ["ema", "ema_factors", "trust_region"])
def test_checkpoint_restores_an_exact_continuation(runtime, tmp_path, regularization) -> None:
    trainer = runtime.trainer
    cfg = CFG.merged({"teacher_regularization": regularization.removesuffix("_factors")})
    if regularization == "ema_factors":
        cfg = cfg.merged({"ema_target": "factors"})
    trainer.reset(cfg)
    batch = make_batch(trainer)
    trainer.step(batch)
    trainer.save_checkpoint(tmp_path / "ckpt")
    torch.manual_seed(1234)
    expected_noise = torch.rand(3)
    expected = trainer.step(batch)
    expected_params = student_params(trainer)

    trainer.reset(cfg.merged({"seed": 99}))  # scramble everything
    trainer.load_checkpoint(tmp_path / "ckpt")
    torch.manual_seed(1234)
    assert torch.equal(torch.rand(3), expected_noise)
    got = trainer.step(batch)
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-7)
    assert got.get("teacher_delta_ratio") == expected.get("teacher_delta_ratio")
    params = student_params(trainer)
    assert all(torch.equal(params[k], expected_params[k]) for k in params)


def test_checkpoint_restores_the_rng(runtime, tmp_path) -> None:
    trainer = runtime.trainer
    trainer.reset(CFG)
    trainer.save_checkpoint(tmp_path / "ckpt")
    expected = torch.rand(4)
    torch.rand(100)
    trainer.load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(torch.rand(4), expected)
    # the trainer's own state only: the solve loop's state is written once, in its state.pt
    blob = torch.load(tmp_path / "ckpt" / "trainer.pt", weights_only=False)
    assert set(blob) == {"optimizer", "updates", "cfg", "rng"}


def test_a_non_finite_gradient_skips_the_update_and_the_ema(runtime) -> None:
    """The authors' _optimizer_step: a non-finite gradient norm skips the optimizer step, and
    update_policy then skips the EMA update; the step says so in skipped_nonfinite."""
    trainer = runtime.trainer
    trainer.reset(CFG.merged({"ema_rate": 0.5}))
    trainer.step(make_batch(trainer))  # a real update first: the teacher's delta is not zero
    student, teacher = (
        student_params(trainer),
        {k: v.clone() for k, v in trainer.teacher_delta.items()},
    )
    adam = {id(p): s["step"].clone() for p, s in trainer.optimizer.state.items()}
    updates = trainer.updates
    some = next(p for n, p in trainer.model.named_parameters() if f".{STUDENT}." in n)
    hook = some.register_hook(lambda g: g * float("inf"))
    try:
        metrics = trainer.step(make_batch(trainer))
    finally:
        hook.remove()
    assert metrics["skipped_nonfinite"] == 1.0 and not math.isfinite(metrics["grad_norm"])
    after = student_params(trainer)
    assert all(torch.equal(student[k], after[k]) for k in student)
    assert all(torch.equal(teacher[k], trainer.teacher_delta[k]) for k in teacher)
    assert trainer.updates == updates
    assert all(torch.equal(s["step"], adam[id(p)]) for p, s in trainer.optimizer.state.items())
    assert trainer.step(make_batch(trainer))["skipped_nonfinite"] == 0.0  # and it goes on


def test_ema_moves_once_per_batch_after_all_its_updates(runtime) -> None:
    """updates_per_batch = 3: the teacher's delta moves once, towards the student as it is
    after the third update (the authors update the teacher once per update_policy call)."""
    trainer = runtime.trainer
    trainer.reset(CFG.merged({"updates_per_batch": 3, "ema_rate": 0.3}))
    start = {k: v.clone() for k, v in trainer.teacher_delta.items()}
    trainer.step(make_batch(trainer))
    assert trainer.updates == 3
    for name, d in student_deltas(trainer).items():
        torch.testing.assert_close(trainer.teacher_delta[name], torch.lerp(start[name], d, 0.3))


def test_rollout_correction_with_the_hf_engines_own_log_probs(runtime) -> None:
    """Sampled by the hf engine from the same weights, the trainer's and the engine's
    log-probs agree: weights ~1, nothing capped; a sampler that disagrees is capped at 2."""
    from sdpo_core.types import SamplingParams

    trainer, engine = runtime.trainer, runtime.engine
    trainer.reset(CFG)
    template = make_batch(trainer)
    done = engine.generate(template.prompt_ids, SamplingParams(n=4, max_new_tokens=24, seed=0))
    batch = RolloutBatch(
        template.prompt_ids,
        [c.token_ids for c in done],
        template.teacher_prompt_ids,
        [c.logprobs for c in done],
    )
    m = trainer.step(batch)
    assert m["rollout_is_mean"] == pytest.approx(1.0, abs=1e-3)
    assert m["rollout_is_capped_frac"] == 0.0 and m["rollout_logp_gap_max"] < 1e-3
    trainer.reset(CFG)
    batch.rollout_logprobs = [[x - 1.0 for x in c.logprobs] for c in done]  # trainer e^1 x more
    m = trainer.step(batch)
    assert m["rollout_is_capped_frac"] == 1.0 and m["rollout_is_mean"] == pytest.approx(
        math.e, rel=1e-3
    )
    trainer.reset(CFG.merged({"rollout_is": None}))
    assert "rollout_is_mean" not in trainer.step(batch)
