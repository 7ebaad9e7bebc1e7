"""The toy world: problem family, bundled model and tokenizer, and the model's in-context
learning (feedback in the context changes its answer; a solution in the context is copied)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdpo_core.config import SDPOConfig
from sdpo_core.problem import parse_problem
from sdpo_core.teacher import render_reprompt
from sdpo_core.toy import DEFAULT_MODEL_DIR, DISCOVERY_SUITE, EASY_EXAMPLE, HARD_SUITE, make_problem
from sdpo_core.toy.world import (
    answer_wrong_at,
    example_files,
    render_answer,
    training_example,
)
from sdpo_core.verifiers import build_verifier

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CFG = SDPOConfig()


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32).eval()


def chat(tok, message: str) -> str:
    return tok.apply_chat_template(
        [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False
    )


def encode(tok, message: str, response: str) -> tuple[torch.Tensor, int]:
    """input_ids [1, P + R + 1] (prompt, response, EOS) and the prompt length P."""
    prompt = tok(chat(tok, message), add_special_tokens=False)["input_ids"]
    resp = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return torch.tensor([prompt + resp]), len(prompt)


@torch.no_grad()
def digit_probs(model, tok, message: str, response: str) -> torch.Tensor:
    """[N, 10]: the model's distribution over digits at each value position of `response`."""
    ids, p = encode(tok, message, response)
    probs = model(input_ids=ids).logits[0].softmax(-1)  # [L, V]
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    pos = [t for t in range(p, ids.shape[1]) if ids[0, t] in digits]
    return probs[[t - 1 for t in pos]][:, digits]


def problems(n: int, n_keys: int, seed0: int = 500) -> list[dict]:
    return [make_problem(seed0 + i, n_keys) for i in range(n)]


# ------------------------------------------------------------------ problem family


def test_problems_are_valid_and_deterministic():
    for p in [*HARD_SUITE, EASY_EXAMPLE, make_problem(3, 1), make_problem(3, 8)]:
        spec = parse_problem(p)
        keys = list(p["verifier"]["cases"])
        assert p["prompt"].endswith(f"x in {' '.join(keys)}. Answer as x=h(x).")
        assert spec.sdpo_config().max_new_tokens >= 48
        assert p["metadata"]["n_keys"] == len(keys) == len(set(keys))
        assert build_verifier(p["verifier"]).verify(render_answer(keys, p["verifier"]["cases"]))
    assert make_problem(7, 5) == make_problem(7, 5) != make_problem(8, 5)
    assert all(6 <= p["metadata"]["n_keys"] <= 7 for p in HARD_SUITE)
    assert len({p["prompt"] for p in HARD_SUITE}) == len(HARD_SUITE) >= 8


def test_example_files_match_make_problem():
    for name, problem in example_files().items():
        assert json.loads((EXAMPLES / name).read_text()) == problem, name
    hard = json.loads((EXAMPLES / "toy_hard.json").read_text())
    assert hard == DISCOVERY_SUITE[0] and hard["budget"]["max_attempts"] == 1024
    assert json.loads((EXAMPLES / "toy_easy.json").read_text())["metadata"]["n_keys"] == 2


def test_training_data_never_contains_the_hard_suite():
    hard = {p["prompt"] for p in HARD_SUITE}
    hard_tables = {tuple(p["verifier"]["cases"].items()) for p in HARD_SUITE}
    rng = random.Random(0)
    for _ in range(2000):
        message, answer, table = training_example(rng)
        assert tuple(table.items()) not in hard_tables and message.split(".")[0] not in hard
        assert answer == render_answer(list(table), table)


# ------------------------------------------------------------------ model and tokenizer


def test_model_and_tokenizer_load(model, tok):
    assert model.config.model_type == "llama"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.config.vocab_size == len(tok) <= 1024
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_chat_template_and_tokenization(tok):
    text = chat(tok, "Problem 1234: give h(x) for x in a b. Answer as x=h(x).")
    assert text == (
        "<|im_start|>user\nProblem 1234: give h(x) for x in a b. Answer as x=h(x).<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    # prompt and response encode separately exactly as together (the solve loop relies on it)
    resp = "a=7 b=4"
    assert tok(text + resp, add_special_tokens=False)["input_ids"] == ids + tok(resp)["input_ids"]
    # digits are single tokens; any text round-trips (byte-level, no UNK)
    assert len(tok("1234567890", add_special_tokens=False)["input_ids"]) == 10
    for s in ["héllo wörld 世界 🙂\t\n", "def f(x):\n    return x ** 2"]:
        assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s


# ------------------------------------------------------------------ behaviour


@torch.no_grad()
def test_generated_answers_are_well_formed(model, tok):
    torch.manual_seed(0)
    for p in [*problems(3, 3), HARD_SUITE[0], HARD_SUITE[1]]:
        keys = list(p["verifier"]["cases"])
        fmt = re.compile("^" + " ".join(f"{k}=[0-9]" for k in keys) + "$")
        ids, _ = encode(tok, p["prompt"], "")
        prompt = ids[:, :-1]  # drop the EOS of the empty response
        for sampling in [{"do_sample": False}, {"do_sample": True, "temperature": 1.0, "top_k": 0}]:
            out = model.generate(
                prompt.repeat(4, 1),
                attention_mask=torch.ones(4, prompt.shape[1], dtype=torch.long),
                max_new_tokens=48,
                pad_token_id=tok.pad_token_id,
                **sampling,
            )
            for row in out[:, prompt.shape[1] :]:
                assert tok.eos_token_id in row.tolist(), "no EOS"
                text = tok.decode(row, skip_special_tokens=True)
                assert fmt.match(text), (text, keys)


def test_feedback_reveals_digits_and_nothing_else(model, tok):
    """The self-teacher: given the verifier's feedback on an attempt, it scores the student's
    own (wrong) attempt tokens with high p(expected digit) at the named keys, and stays
    near-uniform where the feedback says nothing (and without feedback)."""
    rng = random.Random(1)
    revealed, hidden, plain = [], [], []
    for p in problems(8, 6) + problems(8, 3, seed0=600):
        table = p["verifier"]["cases"]
        keys = list(table)
        wrong = set(rng.sample(keys, rng.randint(2, len(keys))))  # which keys the attempt misses
        attempt = answer_wrong_at(rng, table, wrong)
        fb = build_verifier(p["verifier"]).verify(attempt).feedback
        named = re.findall(r"Input: (\S+)\nExpected Output: (\d)", fb)
        assert len(named) == 2
        teacher = digit_probs(
            model, tok, render_reprompt(p["prompt"], CFG, feedbacks=[fb]), attempt
        )
        for i, k in enumerate(keys):
            if k in dict(named):
                revealed.append(float(teacher[i, int(table[k])]))
            else:
                hidden.append(float(teacher[i].max()))
        plain += digit_probs(model, tok, p["prompt"], attempt).max(-1).values.tolist()
    p_revealed = sum(revealed) / len(revealed)
    print(f"p(expected | feedback) = {p_revealed:.3f}; max p unrevealed = {max(hidden):.3f}")
    assert p_revealed > 0.8
    assert max(plain) < 0.3, "no-feedback answers should be near-uniform"
    assert sum(hidden) / len(hidden) < 0.3


def test_feedback_about_any_key_is_read_in_either_block(model, tok):
    """Every key of an 8-key table, named alone or in either of the verifier's two blocks, is
    read: late in a run the student has the early keys right and the feedback names late ones,
    so a teacher that reads only some keys stalls there (benchmarks/toy_reading.py). One gap
    is known and left: g in the first block when h is in the second (p 0.1; only N = 8)."""
    rng = random.Random(2)
    reads: dict[str, list[float]] = {}
    for p in problems(4, 8, seed0=700):
        table = p["verifier"]["cases"]
        keys = list(table)
        verifier = build_verifier(p["verifier"])
        answer = render_answer(keys, table)
        for i, k in enumerate(keys):
            cases = {"alone": {k}}
            if i + 1 < len(keys) and k != "g":  # the known gap
                cases["first"] = {k, rng.choice(keys[i + 1 :])}
            if i > 0:
                cases["second"] = {k, rng.choice(keys[:i])}
            for block, wrong in cases.items():
                fb = verifier.verify(answer_wrong_at(rng, table, wrong)).feedback
                message = render_reprompt(p["prompt"], CFG, feedbacks=[fb])
                p_digit = float(digit_probs(model, tok, message, answer)[i, int(table[k])])
                reads.setdefault(f"{k}/{block}", []).append(p_digit)
    means = {name: round(sum(v) / len(v), 3) for name, v in sorted(reads.items())}
    print(means)
    assert len(means) == 21 and min(means.values()) > 0.9, means


def test_pretrain_refuses_cycles_no_recipe_defines(tmp_path):
    """`--cycles` past the reading cycles is a usage error naming the flag and the limit (exit 2),
    before any training or output."""
    out = tmp_path / "model"
    run = subprocess.run(
        [sys.executable, "-m", "sdpo_core.toy.pretrain", "--cycles", "6", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "--cycles 6: at most 5" in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()
