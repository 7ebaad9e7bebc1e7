"""The `vllm` engine against a real vLLM CPU server (tests/vllm_fixture.py) serving the toy model.

Log-prob checks compare vLLM's raw log-probs with transformers(+peft) in float32 on both sides,
per token, to LOGPROB_TOL.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm_fixture import SERVED_NAME, make_random_adapter, vllm_server  # noqa: F401 - fixture

from sdpo_core.engines.base import Engine
from sdpo_core.engines.vllm import (
    VLLMAdapterError,
    VLLMEngine,
    VLLMRequestError,
    VLLMUnavailableError,
)
from sdpo_core.engines.vllm_server import VLLMServer, free_port
from sdpo_core.types import SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

LOGPROB_TOL = 1e-4  # max |vLLM - transformers| per token, float32 both sides


@pytest.fixture(scope="module")
def tokenizer(toy_model_dir: Path):
    return AutoTokenizer.from_pretrained(toy_model_dir)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture
def engine(vllm_server: VLLMServer):  # noqa: F811 - the fixture imported above
    eng = VLLMEngine(vllm_server.url, vllm_server.model_name, timeout=120)
    yield eng
    eng.close()


def hf_logprobs(
    model_dir: Path, prompt: list[int], cont: list[int], adapter: Path | None = None
) -> list[float]:
    """transformers(+peft) log-prob of each continuation token, float32, temperature 1."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + cont])).logits[0]  # [P+C, V]
    logp = torch.log_softmax(logits.float(), dim=-1)[len(prompt) - 1 : -1]  # [C, V]
    return logp.gather(-1, torch.tensor(cont)[:, None])[:, 0].tolist()


def max_abs_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_generate_returns_ids_and_raw_logprobs(
    engine: VLLMEngine, tokenizer, prompt_ids: list[int], toy_model_dir: Path
) -> None:
    assert isinstance(engine, Engine)
    eos = tokenizer.eos_token_id
    sampling = SamplingParams(n=4, max_new_tokens=24, temperature=0.7, seed=1)
    completions = engine.generate(prompt_ids, sampling)
    assert len(completions) == 4
    for c in completions:
        assert 0 < len(c.token_ids) == len(c.logprobs) <= 24
        assert all(math.isfinite(x) and x <= 0.0 for x in c.logprobs)
        # vLLM's detokenizer holds back the trailing bytes of an incomplete UTF-8 character
        decoded = tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert decoded.startswith(c.text) and set(decoded[len(c.text) :]) <= {"\ufffd"}
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == eos and eos not in c.token_ids[:-1]
        else:
            assert len(c.token_ids) == 24 and eos not in c.token_ids
    # Sampled at temperature 0.7, the log-probs are still the raw temperature-1 ones: they
    # equal a prefill's prompt log-probs and transformers' log_softmax(logits).
    c = completions[0]
    assert max_abs_diff(c.logprobs, engine.score(prompt_ids, c.token_ids)) < LOGPROB_TOL
    ref = hf_logprobs(toy_model_dir, prompt_ids, c.token_ids)
    assert max_abs_diff(c.logprobs, ref) < LOGPROB_TOL


def test_seeded_generation_is_reproducible(engine: VLLMEngine, prompt_ids: list[int]) -> None:
    sampling = SamplingParams(n=3, max_new_tokens=16, temperature=1.0, seed=1234)
    a = engine.generate(prompt_ids, sampling)
    b = engine.generate(prompt_ids, sampling)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    for x, y in zip(a, b, strict=True):
        assert x.logprobs == pytest.approx(y.logprobs, abs=1e-6)


def test_context_window_is_the_servers_max_model_len(
    engine: VLLMEngine, toy_model_dir: Path
) -> None:
    """What solve checks prompt + max_new_tokens against before the first attempt: the managed
    server's max_model_len, by default the model's own window."""
    config = json.loads((toy_model_dir / "config.json").read_text())
    assert engine.context_window() == config["max_position_embeddings"] == 1024


def test_adapter_load_swap_unload(
    engine: VLLMEngine, prompt_ids: list[int], toy_model_dir: Path, tmp_path: Path
) -> None:
    ad1 = make_random_adapter(toy_model_dir, tmp_path / "v1", seed=1)
    ad2 = make_random_adapter(toy_model_dir, tmp_path / "v2", seed=2)
    # a fixed continuation: the base model's greedy answer
    greedy = SamplingParams(n=1, max_new_tokens=16, temperature=0.0)
    cont = engine.generate(prompt_ids, greedy)[0].token_ids
    base_lp = engine.score(prompt_ids, cont)

    t0 = time.perf_counter()
    engine.load_adapter(str(ad1), 1)
    t_load = time.perf_counter() - t0
    v1_name = engine.adapter_name
    assert engine.adapter_version == 1 and v1_name is not None and v1_name.startswith("sdpo-v1-")
    assert v1_name in engine.loaded_models()
    ref1 = hf_logprobs(toy_model_dir, prompt_ids, cont, ad1)
    lp1 = engine.score(prompt_ids, cont)
    err1 = max_abs_diff(lp1, ref1)
    assert err1 < LOGPROB_TOL
    assert max_abs_diff(lp1, base_lp) > 100 * LOGPROB_TOL  # the adapter really is applied

    t0 = time.perf_counter()
    engine.load_adapter(str(ad2), 2)
    t_swap = time.perf_counter() - t0
    v2_name = engine.adapter_name
    assert engine.adapter_version == 2 and v2_name != v1_name
    models = engine.loaded_models()
    assert v2_name in models and v1_name not in models and SERVED_NAME in models
    ref2 = hf_logprobs(toy_model_dir, prompt_ids, cont, ad2)
    lp2 = engine.score(prompt_ids, cont)
    err2 = max_abs_diff(lp2, ref2)
    assert err2 < LOGPROB_TOL
    assert max_abs_diff(lp2, lp1) > 100 * LOGPROB_TOL  # v2 is served, not v1
    # generation goes through v2: its sampled log-probs are v2's
    c = engine.generate(prompt_ids, SamplingParams(n=1, max_new_tokens=16, seed=7))[0]
    assert max_abs_diff(c.logprobs, hf_logprobs(toy_model_dir, prompt_ids, c.token_ids, ad2)) < (
        LOGPROB_TOL
    )
    # the old name is gone from the server
    with pytest.raises(VLLMRequestError) as exc:
        engine._post_json("/v1/completions", {"model": v1_name, "prompt": prompt_ids}, "old")
    assert exc.value.status == 404
    print(
        f"\nadapter load {t_load * 1e3:.0f} ms, swap (load v2 + unload v1) {t_swap * 1e3:.0f} ms;"
        f" max |vLLM - peft| log-prob: v1 {err1:.2e}, v2 {err2:.2e}"
    )


def test_generate_many_and_serve_base(
    engine: VLLMEngine, prompt_ids: list[int], toy_model_dir: Path, tmp_path: Path
) -> None:
    """One completion per prompt, in order, each with its own prompt's log-probs (the
    multi_turn method's conversations); serve_base drops the adapter a previous problem
    left (a new problem starts from the base model)."""
    other = prompt_ids[:-4] + prompt_ids[-2:]  # a different, shorter context
    sampling = SamplingParams(n=1, max_new_tokens=12, seed=5)
    got = engine.generate_many([prompt_ids, other, prompt_ids], sampling)
    assert len(got) == 3
    for prompt, c in zip([prompt_ids, other, prompt_ids], got, strict=True):
        ref = hf_logprobs(toy_model_dir, prompt, c.token_ids)
        assert max_abs_diff(c.logprobs, ref) < LOGPROB_TOL

    adapter = make_random_adapter(toy_model_dir, tmp_path / "v1", seed=1)
    engine.load_adapter(str(adapter), 1)
    name = engine.adapter_name
    engine.serve_base()
    assert engine.adapter_name is None and engine.adapter_version == 0
    assert name not in engine.loaded_models()
    c = engine.generate(prompt_ids, sampling)[0]
    assert max_abs_diff(c.logprobs, hf_logprobs(toy_model_dir, prompt_ids, c.token_ids)) < (
        LOGPROB_TOL
    )


def test_adapter_load_failure_keeps_previous(
    engine: VLLMEngine, prompt_ids: list[int], tmp_path: Path
) -> None:
    with pytest.raises(VLLMAdapterError) as exc:
        engine.load_adapter(str(tmp_path / "no-such-adapter"), 5)
    assert exc.value.message  # the server's own words
    assert engine.adapter_version == 0 and engine.adapter_name is None
    assert len(engine.generate(prompt_ids, SamplingParams(n=1, max_new_tokens=4))) == 1


def test_unreachable_server_is_a_typed_error(prompt_ids: list[int]) -> None:
    eng = VLLMEngine(
        f"http://127.0.0.1:{free_port()}",
        "x",
        timeout=5,
        retries=1,
        server_report=lambda: "managed vLLM server exited with code 1",
    )
    with pytest.raises(VLLMUnavailableError, match="unreachable") as exc:
        eng.generate(prompt_ids, SamplingParams(n=1, max_new_tokens=4))
    assert str(exc.value).endswith("\nmanaged vLLM server exited with code 1")
    with pytest.raises(VLLMUnavailableError):
        eng.wait_ready(timeout=1.0)
    assert not eng.health()
    eng.close()


def test_server_failure_report_names_the_root_cause(tmp_path: Path) -> None:
    """A server that died: the report says so and lifts the errors out of its log (vLLM puts
    the cause of an HTTP 500 there, far above the tail)."""
    log = tmp_path / "server.log"
    lines = [
        "(APIServer pid=1) WARNING [x.py:1] fd limits can cause `OSError: [Errno 24] ...`",
        "(Worker pid=2) ERROR [y.py:2] AttributeError: module 'triton.language' has no attr",
        *[f"(APIServer pid=1) ERROR [z.py:{i}] traceback line {i}" for i in range(40)],
        "(APIServer pid=1) ERROR [z.py:9] EngineDeadError: EngineCore encountered an issue.",
    ]
    log.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    report = VLLMServer(proc, "http://127.0.0.1:1", "m", log).failure_report(n_lines=5)
    assert f"(pid {proc.pid}) exited with code 3; log {log}" in report
    causes = report.split("errors in its log:\n")[1].split("\nits last")[0].splitlines()
    assert causes == [
        "AttributeError: module 'triton.language' has no attr",
        "EngineDeadError: EngineCore encountered an issue.",
    ]  # the WARNING line is not an error
    assert report.endswith("\n".join(lines[-5:]))


def test_trainer_step_adapter_served_matches_trainer(
    engine: VLLMEngine, toy_model_dir: Path, tmp_path: Path
) -> None:
    """After one SDPO step, vLLM serving the saved adapter gives the trainer's log-probs."""
    from sdpo_core.config import SDPOConfig
    from sdpo_core.trainer import RolloutBatch, SDPOTrainer

    trainer = SDPOTrainer(toy_model_dir, device="cpu")
    cfg = SDPOConfig(lr=1e-2, seed=0, samples_per_step=4, max_new_tokens=24)
    trainer.reset(cfg)
    question = "What is 3 + 4?"
    prompt = trainer.encode_chat(question)
    sampling = SamplingParams(n=4, max_new_tokens=24, temperature=1.0, seed=3)
    responses = [c.token_ids for c in engine.generate(prompt, sampling)]
    teacher_prompt = trainer.encode_chat(
        cfg.reprompt_template.format(
            prompt=question,
            solution="",
            feedback=cfg.feedback_template.format(feedback_raw="The answer is 7."),
        )
    )
    batch = RolloutBatch(prompt, responses, [teacher_prompt] * len(responses))
    metrics = trainer.step(batch)
    assert metrics["grad_norm"] > 0
    trainer.save_adapter(tmp_path / "adapter-v1")
    engine.load_adapter(str(tmp_path / "adapter-v1"), 1)
    errs, moved = [], []
    for resp in responses:
        served = engine.score(prompt, resp)
        trained = trainer.sequence_logprobs(prompt, resp)
        errs.append(max_abs_diff(served, trained))
        moved.append(max_abs_diff(trained, hf_logprobs(toy_model_dir, prompt, resp)))
    print(f"\ntrainer vs vLLM after one step: max |diff| {max(errs):.2e}; moved {max(moved):.2e}")
    assert max(moved) > 100 * LOGPROB_TOL  # the step changed the model measurably
    assert max(errs) < LOGPROB_TOL


def test_solve_loop_through_vllm_swaps_adapters_that_match_the_trainer(
    vllm_server: VLLMServer,  # noqa: F811 - the fixture imported above
    runtime,
    tmp_path: Path,
) -> None:
    """The whole loop on the vllm engine: each SDPO step's adapter is exported, loaded under a
    new name, the old one unloaded, and the served log-probs equal the trainer's. The rollout
    correction's step metrics (the sampler's log-probs are vLLM's here) show the same: weights
    1, nothing capped, a gap within the float32 tolerance."""
    from sdpo_core.contract import StepPayload
    from sdpo_core.problem import parse_problem
    from sdpo_core.runtime import Runtime
    from sdpo_core.solve import solve
    from sdpo_core.toy import make_problem

    data = make_problem(9003, 6, max_attempts=24)
    data["sdpo"].update(samples_per_step=8, lora_rank=8, lr=3e-3)
    engine = VLLMEngine(vllm_server.url, vllm_server.model_name, timeout=120)
    rt = Runtime(str(vllm_server.model_name), runtime.trainer, engine)
    events: list = []
    result = solve(parse_problem(data), rt, on_event=events.append, checkpoint_dir=tmp_path)
    try:
        assert result.status == "exhausted" and result.attempts == 24
        steps = [e for e in events if isinstance(e, StepPayload)]
        assert [s.adapter_version for s in steps] == [1, 2]
        for s in steps:
            m = s.metrics
            assert m["rollout_is_mean"] == pytest.approx(1.0, abs=10 * LOGPROB_TOL)
            assert m["rollout_is_capped_frac"] == 0.0
            assert 0.0 <= m["rollout_logp_gap_max"] < LOGPROB_TOL
        assert engine.adapter_version == 2 and engine.adapter_name is not None
        served = [m for m in engine.loaded_models() if m.startswith("sdpo-v")]
        assert served == [engine.adapter_name]  # v1 was unloaded
        attempt = next(e for e in events if e.kind == "attempt")
        prompt = runtime.trainer.encode_chat(data["prompt"])
        response = runtime.trainer.tokenizer(attempt.text, add_special_tokens=False)["input_ids"]
        theirs = engine.score(prompt, response)
        ours = runtime.trainer.sequence_logprobs(prompt, response)
        assert max_abs_diff(theirs, ours) < LOGPROB_TOL
    finally:
        engine.close()


@pytest.mark.parametrize("schedule", ["lockstep", "overlap"])
def test_two_problems_share_the_server_and_a_refused_adapter_fails_only_its_own(
    vllm_server: VLLMServer,  # noqa: F811 - the fixture imported above
    runtime,
    tmp_path: Path,
    schedule: str,
) -> None:
    """Two problems in flight on one trainer and one server (sdpo_core/slots.py), in
    lock-step rounds or overlapping: each slot serves its own adapter; the one whose adapter
    the server refuses (rank above its --max-lora-rank) fails with the server's reason, the
    other runs to its budget."""
    import threading

    from sdpo_core.problem import parse_problem
    from sdpo_core.runtime import Runtime
    from sdpo_core.slots import GenerationRounds
    from sdpo_core.solve import solve
    from sdpo_core.toy import make_problem

    def spec(seed: int, rank: int):
        data = make_problem(seed, 6, max_attempts=24)
        data["sdpo"].update(samples_per_step=8, lora_rank=rank, lr=3e-3)
        return parse_problem(data)

    engine = VLLMEngine(vllm_server.url, vllm_server.model_name, timeout=120)
    rounds = GenerationRounds(runtime.trainer.lock) if schedule == "lockstep" else None
    rt = Runtime(str(vllm_server.model_name), runtime.trainer, engine, rounds=rounds)
    problems = {"good": (spec(9004, 8), 0), "refused": (spec(9005, 32), 1)}
    results: dict = {}

    def run(name: str) -> None:
        problem, slot = problems[name]
        results[name] = solve(problem, rt.for_slot(slot), checkpoint_dir=tmp_path / name)

    threads = [threading.Thread(target=run, args=(name,)) for name in problems]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        good, refused = results["good"], results["refused"]
        assert good.status == "exhausted" and good.attempts == 24 and good.steps == 2, good
        assert refused.status == "failed" and refused.attempts == 8, refused
        assert "VLLMAdapterError" in refused.error and "rank" in refused.error.lower()
        assert rt.for_slot(0).engine.adapter_version == 2
        assert rt.for_slot(1).engine is not rt.for_slot(0).engine
    finally:
        rt.close()
        runtime.trainer.release(1)
