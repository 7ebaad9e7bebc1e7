"""The model thread (sdpo_core/model_thread.py): the trainer's and the hf generator's calls,
from whichever thread, run on one native thread; nested calls run at once; errors reach the
caller."""

from __future__ import annotations

import threading

import pytest

from sdpo_core.model_thread import MODEL_THREAD, on_model_thread


@on_model_thread
def where() -> str:
    return threading.current_thread().name


@on_model_thread
def nested() -> tuple[str, str]:
    return threading.current_thread().name, where()  # would deadlock if it queued


@on_model_thread
def fails() -> None:
    raise ValueError("bad batch")


def test_calls_from_any_thread_run_on_the_model_thread() -> None:
    names: list[str] = []
    threads = [threading.Thread(target=lambda: names.append(where())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert names == ["model"] * 4 and where() == "model"
    assert nested() == ("model", "model")
    with pytest.raises(ValueError, match="bad batch"):
        fails()
    assert MODEL_THREAD.run(lambda x: x + 1, 1) == 2  # and it goes on after an error


def test_the_trainer_and_generator_compute_on_it(runtime) -> None:
    """Every torch call of a solve runs on the model thread, whichever thread asks."""
    seen: set[str] = set()
    runtime.trainer.reset(runtime.defaults.merged({}))
    hook = runtime.trainer.base.get_input_embeddings().register_forward_hook(
        lambda *_: seen.add(threading.current_thread().name)
    )
    try:
        from sdpo_core.types import SamplingParams

        prompt = runtime.trainer.encode_chat("Find the hidden table.")
        runner = threading.Thread(
            target=lambda: runtime.engine.generate(
                prompt, SamplingParams(n=2, max_new_tokens=4, temperature=1.0, top_p=1.0)
            )
        )
        runner.start()
        runner.join(60)
        runtime.trainer.sequence_logprobs(prompt, [5, 6, 7])
    finally:
        hook.remove()
    assert seen == {"model"}, seen
