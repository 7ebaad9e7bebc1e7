"""Model defaults: a JSON of SDPOConfig fields beside the model, overridable per problem."""

from __future__ import annotations

import json

import pytest

from sdpo_core.config import SDPOConfig
from sdpo_core.problem import parse_problem
from sdpo_core.runtime import MODEL_DEFAULTS_FILE, family_defaults, load_model_defaults
from sdpo_core.toy import DEFAULT_MODEL_DIR, make_problem


def test_no_file_gives_the_plain_defaults(tmp_path) -> None:
    assert load_model_defaults(tmp_path).lr == 1e-4


def test_file_sets_defaults_and_a_problem_overrides_them(tmp_path) -> None:
    (tmp_path / MODEL_DEFAULTS_FILE).write_text(
        json.dumps({"_comment": "why", "lr": 0.02, "lora_rank": 4})
    )
    defaults = load_model_defaults(tmp_path)
    assert (defaults.lr, defaults.lora_rank) == (0.02, 4)
    data = make_problem(3, 4)
    assert parse_problem(data).sdpo_config(defaults).lr == 0.02
    data["sdpo"]["lr"] = 0.001
    cfg = parse_problem(data).sdpo_config(defaults)
    assert (cfg.lr, cfg.lora_rank) == (0.001, 4)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"lr": -1}', "lr"),
        ('{"nope": 1}', "nope"),
    ],
)
def test_a_bad_file_names_itself_and_the_field(tmp_path, text, match) -> None:
    (tmp_path / MODEL_DEFAULTS_FILE).write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_model_defaults(tmp_path)
    assert MODEL_DEFAULTS_FILE in str(err.value)


def test_the_bundled_model_ships_its_defaults_and_the_runtime_uses_them(runtime) -> None:
    shipped = load_model_defaults(DEFAULT_MODEL_DIR)
    assert shipped.lr != 1e-4  # measured for this model, not the generic default
    family = SDPOConfig().merged(family_defaults(DEFAULT_MODEL_DIR))
    assert runtime.defaults == load_model_defaults(DEFAULT_MODEL_DIR, family)
    assert (runtime.defaults.lr, runtime.defaults.lora_rank) == (shipped.lr, shipped.lora_rank)
    for name in ("toy_hard.json", "toy_easy.json"):
        example = json.loads((DEFAULT_MODEL_DIR.parents[2] / "examples" / name).read_text())
        assert "lr" not in example["sdpo"]


def test_generic_defaults_are_the_authors_and_a_thinking_template_gets_thinking_off(
    tmp_path,
) -> None:
    """Without a defaults file: 8,192 new tokens (user.yaml max_response_length) and, for a
    template with a thinking switch (Qwen3), enable_thinking false (their
    apply_chat_template_kwargs); a template without the switch is left alone."""
    from transformers import AutoTokenizer

    from sdpo_core.chat import encode_chat
    from sdpo_core.runtime import template_defaults

    assert SDPOConfig().max_new_tokens == 8192 and SDPOConfig().samples_per_step == 16
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    assert template_defaults(tok) == {}  # ChatML without a switch
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>"
        "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
        "{% endif %}"
    )
    assert template_defaults(tok) == {"enable_thinking": False}
    cfg = SDPOConfig().merged(template_defaults(tok))
    text = tok.decode(encode_chat(tok, "hi", enable_thinking=cfg.enable_thinking))
    assert text.endswith("<|assistant|><think></think>")
