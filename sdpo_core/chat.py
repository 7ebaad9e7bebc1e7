"""Chat prompts as the model's own template renders them, and the answer part of a response.

Options (SDPOConfig fields, so a problem's "sdpo" object or the model's defaults set them):
- system_prompt: a system message before the user's. Templates that refuse a system role
  (Gemma 2, Mistral v0.1) or drop it get it prepended to the user message instead, as
  Gemma 3's own template does.
- enable_thinking: the switch of Qwen3-style templates (`enable_thinking`); None leaves the
  template's default. Setting it for a template without that switch is an error, not a no-op.

The student's prompt and every teacher reprompt go through the same rendering, so the teacher
sees the response in the context the student produced it in.
"""

from __future__ import annotations

import re
from typing import Any

from jinja2.exceptions import TemplateError, TemplateSyntaxError, UndefinedError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_THINK_BLOCK = re.compile(re.escape(THINK_OPEN) + r".*?" + re.escape(THINK_CLOSE), re.S)


class ChatTemplateError(ValueError):
    """The model's chat template cannot render what was asked (e.g. a thinking switch it lacks)."""


def template_source(tokenizer: Any) -> str:
    """The tokenizer's chat template text (raises ChatTemplateError when it has none)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default")
    if not template:
        raise ChatTemplateError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat template"
        )
    return template


def has_thinking_switch(tokenizer: Any) -> bool:
    """Whether the template reads `enable_thinking` (Qwen3-style)."""
    return "enable_thinking" in template_source(tokenizer)


def render_chat(
    tokenizer: Any,
    user_message: str,
    *,
    system_prompt: str | None = None,
    enable_thinking: bool | None = None,
) -> str:
    """`user_message` (after an optional system message) rendered with the model's chat
    template, generation prompt added."""
    kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
    if enable_thinking is not None:
        if not has_thinking_switch(tokenizer):
            raise ChatTemplateError(
                f"enable_thinking={enable_thinking} is set, but the chat template of "
                f"{getattr(tokenizer, 'name_or_path', '?')} has no thinking switch; "
                "leave it unset (null) for this model"
            )
        kwargs["enable_thinking"] = enable_thinking
    user = {"role": "user", "content": user_message}
    if not system_prompt:
        return tokenizer.apply_chat_template([user], **kwargs)
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": system_prompt}, user], **kwargs
        )
        if system_prompt.strip() in text:
            return text
        # the template dropped the system message without a word: fold it in as below
    except (UndefinedError, TemplateSyntaxError):
        raise
    except TemplateError:  # raise_exception("System role not supported")
        pass
    merged = {"role": "user", "content": f"{system_prompt}\n\n{user_message}"}
    return tokenizer.apply_chat_template([merged], **kwargs)


def encode_chat(
    tokenizer: Any,
    user_message: str,
    *,
    system_prompt: str | None = None,
    enable_thinking: bool | None = None,
) -> list[int]:
    """render_chat's text as token ids (the template carries its own special tokens)."""
    text = render_chat(
        tokenizer, user_message, system_prompt=system_prompt, enable_thinking=enable_thinking
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def strip_thinking(text: str) -> str:
    """The answer part of a response: what a verifier should see.

    Drops every <think>...</think> block. A response whose template opened the block in the
    prompt (it starts inside it) loses everything up to the first </think>; a block still open
    at the end (cut off by max_new_tokens) loses everything from its <think> on.
    """
    if THINK_OPEN not in text and THINK_CLOSE not in text:
        return text
    first_close, first_open = text.find(THINK_CLOSE), text.find(THINK_OPEN)
    if first_close != -1 and (first_open == -1 or first_close < first_open):
        text = text[first_close + len(THINK_CLOSE) :]
    text = _THINK_BLOCK.sub("", text)
    if THINK_OPEN in text:
        text = text[: text.index(THINK_OPEN)]
    return text.lstrip()
