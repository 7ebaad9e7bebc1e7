"""Chat templates as users have them (tests/fixtures/chat_templates, the families' real template
strings): system prompt, Qwen3's thinking switch, the answer part of a thinking response, and
the teacher's reprompt rendered like the student's prompt."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from sdpo_core.chat import ChatTemplateError, encode_chat, render_chat, strip_thinking
from sdpo_core.toy import DEFAULT_MODEL_DIR
from sdpo_core.verifiers import build_verifier
from sdpo_core.verifiers.feedback import extract_code

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
Q = "Write f(x) = x + 1."
SYS = "You are a careful programmer."


@pytest.fixture(scope="module")
def base_tokenizer():
    return AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)


def with_template(tokenizer, family: str):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (TEMPLATES / f"{family}.jinja").read_text()
    tok.bos_token = "<s>"  # the toy tokenizer has none; Llama, Mistral and Gemma templates use it
    return tok


def test_qwen3_thinking_switch_and_system_prompt(base_tokenizer) -> None:
    tok = with_template(base_tokenizer, "qwen3")
    default = render_chat(tok, Q)
    assert default == f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(tok, Q, enable_thinking=True) == default  # thinking is Qwen3's default
    off = render_chat(tok, Q, enable_thinking=False)
    assert off == default + "<think>\n\n</think>\n\n"
    with_sys = render_chat(tok, Q, system_prompt=SYS, enable_thinking=False)
    assert with_sys == f"<|im_start|>system\n{SYS}<|im_end|>\n" + off
    assert (
        encode_chat(tok, Q, enable_thinking=False)
        == tok(off, add_special_tokens=False)["input_ids"]
    )


def test_qwen2_5_system_prompt_replaces_its_default(base_tokenizer) -> None:
    tok = with_template(base_tokenizer, "qwen2_5")
    assert "You are Qwen, created by Alibaba Cloud." in render_chat(tok, Q)
    text = render_chat(tok, Q, system_prompt=SYS)
    assert text == (
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n{Q}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama3_and_phi3_take_a_system_message(base_tokenizer) -> None:
    llama = render_chat(with_template(base_tokenizer, "llama3"), Q, system_prompt=SYS)
    assert llama == (
        f"<s><|start_header_id|>system<|end_header_id|>\n\n{SYS}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{Q}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    phi = render_chat(with_template(base_tokenizer, "phi3"), Q, system_prompt=SYS)
    assert phi == f"<|system|>\n{SYS}<|end|>\n<|user|>\n{Q}<|end|>\n<|assistant|>\n"


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("gemma2", f"<s><start_of_turn>user\n{SYS}\n\n{Q}<end_of_turn>\n<start_of_turn>model\n"),
        ("mistral", f"<s>[INST] {SYS}\n\n{Q} [/INST]"),
    ],
)
def test_templates_without_a_system_role_get_it_in_the_user_turn(
    base_tokenizer, family: str, expected: str
) -> None:
    tok = with_template(base_tokenizer, family)
    assert render_chat(tok, Q, system_prompt=SYS) == expected


def test_a_template_that_drops_the_system_message_gets_it_in_the_user_turn(
    base_tokenizer,
) -> None:
    tok = copy.deepcopy(base_tokenizer)
    tok.chat_template = (  # user and assistant turns only; anything else vanishes
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}<|end|>\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    assert (
        render_chat(tok, Q, system_prompt=SYS) == f"<|user|>\n{SYS}\n\n{Q}<|end|>\n<|assistant|>\n"
    )


@pytest.mark.parametrize("family", ["qwen2_5", "llama3", "mistral", "gemma2", "phi3"])
def test_a_thinking_switch_the_template_lacks_is_an_error(base_tokenizer, family: str) -> None:
    tok = with_template(base_tokenizer, family)
    with pytest.raises(ChatTemplateError, match="no thinking switch"):
        render_chat(tok, Q, enable_thinking=False)


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("no thinking here\n```python\nx\n```", "no thinking here\n```python\nx\n```"),
        ("<think>\nplan\n</think>\n\nfinal", "final"),
        ("<think>\n\n</think>\n\nfinal", "final"),  # thinking off: the empty block is in the prompt
        ("plan, opened by the prompt</think>\nfinal", "final"),  # the template opened <think>
        ("<think>a</think>mid<think>b</think> end", "mid end"),
        ("start <think>cut off by max_new_tokens", "start "),
    ],
)
def test_strip_thinking(response: str, answer: str) -> None:
    assert strip_thinking(response) == answer


def test_code_inside_a_thinking_block_is_not_graded() -> None:
    response = (
        "<think>\nFirst try:\n```python\ndef f(x):\n    return x\n```\nNo, and the draft\n"
        "```python\ndef f(x):\n</think>\n\n```python\ndef f(x):\n    return x + 1\n```\n"
    )
    assert extract_code(strip_thinking(response)) == "def f(x):\n    return x + 1\n"
    assert "return x + 1" not in extract_code(response)  # what grading the raw text would see


def test_an_answer_only_in_unfinished_thinking_does_not_pass() -> None:
    verifier = build_verifier({"kind": "answer", "expected": "7", "match": "numeric"})
    truncated = "<think>\nMaybe the answer is \\boxed{7}, but let me check"
    assert verifier.verify(truncated).passed  # the raw text would be graded on a guess
    assert not verifier.verify(strip_thinking(truncated)).passed
    finished = "<think>\nIs it \\boxed{6}?</think>\n\nThe answer is \\boxed{7}."
    assert verifier.verify(strip_thinking(finished)).passed


def test_student_and_teacher_prompts_share_the_template_options(tmp_path: Path) -> None:
    """Through the solve loop on a tiny Qwen3 with Qwen3's template: the problem's system
    prompt and thinking switch shape the student's prompt and every teacher reprompt."""
    import torch

    from sdpo_core.problem import parse_problem
    from sdpo_core.runtime import load_runtime
    from sdpo_core.solve import solve
    from sdpo_core.toy import make_problem
    from sdpo_core.toy.families import build_tiny_model

    torch.set_num_threads(2)
    rt = load_runtime(build_tiny_model("qwen3", tmp_path / "model"), engine="hf", device="cpu")
    tok = rt.trainer.tokenizer
    tok.chat_template = (TEMPLATES / "qwen3.jinja").read_text()
    batches = []
    step = rt.trainer.step
    rt.trainer.step = lambda batch: batches.append(batch) or step(batch)  # records, then runs
    data = make_problem(9003, 6, max_attempts=8)
    data["sdpo"].update(
        samples_per_step=4, max_new_tokens=8, system_prompt=SYS, enable_thinking=False
    )
    result = solve(parse_problem(data), rt)
    assert result.status == "exhausted" and result.steps == 1, result.error
    (batch,) = batches
    head = f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n"
    tail = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    student = tok.decode(batch.prompt_ids)
    assert student == head + data["prompt"] + tail
    teachers = [tok.decode(t) for t in batch.teacher_prompt_ids if t is not None]
    assert teachers, "the table verifier's feedback gives every sample a teacher"
    for text in teachers:
        assert text.startswith(head + data["prompt"]) and text.endswith(tail)
        assert "Correctly solve the original question." in text
