"""The generation-engine protocol shared by the `hf` and `vllm` engines."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from sdpo_core.types import Completion, SamplingParams


@runtime_checkable
class Engine(Protocol):
    """Samples completions for chat prompts from the current adapter version.

    prompt_ids: the prompt already rendered with the chat template and tokenized
    (the trainer and the engine must agree on the exact tokens).
    """

    name: str
    adapter_version: int
    # it adds its own generate calls to the runtime's PhaseClock (the hf engine: a caller may
    # wait for the model before its call runs); else the solve loop times each call
    times_itself: bool

    def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> list[Completion]:
        """`sampling.n` completions of one prompt."""
        ...

    def generate_many(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion of each prompt, in order (`sampling.n` is not used): rows whose
        contexts differ, as the multi-turn method's conversations."""
        ...

    def context_window(self) -> int | None:
        """The most tokens (prompt + response) it generates over; None: the trainer's model's."""
        ...

    def load_adapter(self, path: str, version: int) -> None:
        """Serve the PEFT adapter saved at `path` as `version` from now on."""
        ...

    def serve_base(self) -> None:
        """Serve the base model (version 0) from now on: a new problem's first rollouts must
        not come from the adapter of the problem before it."""
        ...

    def for_slot(self, slot: int) -> Engine:
        """The engine another problem on the same model uses: its own current adapter, the
        same model or server (sdpo_core/slots.py)."""
        ...

    def close(self) -> None: ...
