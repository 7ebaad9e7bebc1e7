"""The toy model's tokenizer: byte-level BPE (any text encodes, no UNK), digits split one by
one, a ChatML chat template. Built locally with the `tokenizers` library and wrapped as a
standard Hugging Face fast tokenizer (tokenizer.json + tokenizer_config.json), so
`AutoTokenizer.from_pretrained(dir)` loads it like any hub tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2
VOCAB_SIZE = 512

# A little general text beside the synthetic corpus, so common words and the feedback wording
# of other verifiers get merges too (the toy model still reads any text byte by byte).
GENERAL_TEXT = """\
The quick brown fox jumps over the lazy dog. This is a test of the tokenizer and the model.
def solve(x): return x + 1
Time Limit Exceeded. Runtime Error. Compilation Error. Traceback (most recent call last):
Write a function that returns the answer. What is the value of the expression? Explain why.
You are a helpful assistant. Please answer the question below and show your work.
Input Output Expected Result Error Test Passed Failed Problem Solution Question Answer
system user assistant print import return while if else for in and or not with from
"""

# ChatML, as Qwen uses it: <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `corpus` and wrap it with the chat template and special tokens."""
    tok = Tokenizer(models.BPE())
    # Digits first (each digit its own pre-token, never merged), then GPT-2 byte-level split.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        padding_side="left",  # generation pads on the left
    )
