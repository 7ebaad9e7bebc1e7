"""Several problems on one loaded model (sdpo_core/slots.py): slots of the trainer keep their
own weights, optimizer and checkpoints; the hf engine batches the slots' generate calls; runs
in parallel threads each finish as their own problem; one failing run ends alone."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from sdpo_core.problem import parse_problem
from sdpo_core.slots import FairLock, PhaseClock
from sdpo_core.solve import solve
from sdpo_core.toy import make_problem
from sdpo_core.trainer import RolloutBatch

FAST = {"samples_per_step": 8, "lora_rank": 4, "lr": 2e-3}


def problem(seed: int, attempts: int, **sdpo):
    data = make_problem(seed, 6, max_attempts=attempts)
    data["sdpo"].update(FAST, **sdpo)
    return parse_problem(data)


def student_weights(runtime, slot: int) -> dict[str, torch.Tensor]:
    name = runtime.trainer.slots[slot].student
    return {
        n.replace(f".{name}.", "."): p.detach().clone()
        for n, p in runtime.trainer.model.named_parameters()
        if f".{name}." in n
    }


def one_step(view, cfg) -> dict[str, float]:
    view.trainer.reset(cfg)
    prompt = view.trainer.encode_chat("Find the hidden table.")
    teacher = view.trainer.encode_chat("Find the hidden table. Feedback: a is 3.")
    batch = RolloutBatch(prompt, [[5, 6, 7, 8], [9, 10, 11]], [teacher, teacher])
    return view.trainer.step(batch)


def test_a_slot_trains_without_touching_another(runtime, tmp_path: Path) -> None:
    cfg = runtime.defaults.merged({**FAST, "seed": 3})
    a, b = runtime.for_slot(0), runtime.for_slot(1)
    one_step(a, cfg)
    before = student_weights(runtime, 0)
    one_step(b, cfg)  # same seed, same batch: slot 1 ends where slot 0 did
    after_0, after_1 = student_weights(runtime, 0), student_weights(runtime, 1)
    assert all(torch.equal(before[k], after_0[k]) for k in before)
    assert all(torch.allclose(before[k], after_1[k], atol=1e-6) for k in before)
    assert runtime.trainer.slots[0].optimizer is not runtime.trainer.slots[1].optimizer
    # a checkpoint names the adapters as slot 0 does: slot 1's run resumes in slot 2
    b.trainer.save_checkpoint(tmp_path / "ck")
    c = runtime.for_slot(2)
    c.trainer.load_checkpoint(tmp_path / "ck")
    moved = student_weights(runtime, 2)
    assert all(torch.equal(after_1[k], moved[k]) for k in after_1)
    assert runtime.trainer.slots[2].updates == runtime.trainer.slots[1].updates == 1
    for slot in (1, 2):
        runtime.for_slot(slot).trainer.release()


def test_parallel_runs_are_each_their_own_problem(runtime, tmp_path: Path) -> None:
    """Three problems in three threads on one runtime: each is solved or exhausted with its
    own attempts, steps and adapter; the generator served them in fewer calls than asked."""
    generator = runtime.engine.generator
    calls_before = generator.calls
    problems = [problem(9001 + i, 24) for i in range(3)]
    results: dict[int, object] = {}
    events: dict[int, list] = {i: [] for i in range(3)}

    def run(i: int) -> None:
        results[i] = solve(
            problems[i],
            runtime.for_slot(i),
            on_event=events[i].append,
            checkpoint_dir=tmp_path / f"p{i}",
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    rounds = []
    for i in range(3):
        r = results[i]
        assert r.status in {"solved", "exhausted"}, r
        attempts = [e.index for e in events[i] if e.kind == "attempt"]
        assert attempts == list(range(1, r.attempts + 1))
        rounds.append(r.steps + 1)  # rollouts: one per step, and the last one
        assert (tmp_path / f"p{i}" / "adapter" / "adapter_config.json").exists()
    # lock-step rounds: about one call per round for all three, not one per problem and round
    assert generator.calls - calls_before <= max(rounds) + 2 < sum(rounds)
    busy = runtime.phases.busy_seconds()
    assert busy["generation"] > 0 and busy["training"] > 0 and busy["verification"] > 0
    for slot in (1, 2):
        runtime.for_slot(slot).trainer.release()


def test_a_failing_run_ends_alone(runtime, tmp_path: Path) -> None:
    """A problem whose prompt cannot fit the window fails with its error; its neighbour,
    running at the same time, finishes."""
    good = problem(9002, 16)
    too_long = problem(9003, 16, max_new_tokens=32_768)
    out: dict[str, object] = {}

    def run(name: str, spec, slot: int) -> None:
        out[name] = solve(spec, runtime.for_slot(slot), checkpoint_dir=tmp_path / name)

    threads = [
        threading.Thread(target=run, args=("good", good, 0)),
        threading.Thread(target=run, args=("bad", too_long, 1)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert out["bad"].status == "failed" and "context window" in out["bad"].error
    assert out["good"].status in {"solved", "exhausted"} and out["good"].attempts > 0
    runtime.for_slot(1).trainer.release()


def test_fair_lock_serves_in_order() -> None:
    lock, order, started = FairLock(), [], []
    lock.acquire()

    def take(i: int) -> None:
        started.append(i)
        with lock:
            order.append(i)

    threads = []
    for i in range(5):  # queued one after another while the lock is held
        t = threading.Thread(target=take, args=(i,))
        t.start()
        threads.append(t)
        while len(started) <= i or not _waiting(lock, i + 1):
            pass
    lock.release()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4]
    with lock, lock:  # reentrant
        pass


def _waiting(lock: FairLock, n: int) -> bool:
    with lock._cv:
        return len(lock._waiting) >= n


def test_phase_clock_counts_overlap_once() -> None:
    clock = PhaseClock()
    with clock.track("generation"), clock.track("generation"):
        pass
    busy = clock.busy_seconds()
    assert 0 <= busy["generation"] < 1 and busy["training"] == 0


def test_generation_rounds_gather_the_problems_waiting_for_the_model() -> None:
    """Lock-step rounds (sdpo_core/slots.py): problems that ask to generate while another's
    update holds the model generate together after it, holding the model until all are done."""
    import time

    from sdpo_core.slots import GenerationRounds

    lock = FairLock()
    rounds = GenerationRounds(lock)
    ran: list[tuple[int, bool]] = []
    lock.acquire()  # an update in progress

    def ask(i: int) -> None:
        def generate() -> int:
            time.sleep(0.05)
            ran.append((i, lock._owner is not None))  # the model stays taken for the round
            return i

        assert rounds.run(generate) == i

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    while not (lock.waiting == 1 and len(rounds._queue) == 3):
        time.sleep(0.01)
    assert ran == []  # nobody generated during the update
    lock.release()
    for t in threads:
        t.join(10)
    assert sorted(i for i, _ in ran) == [0, 1, 2] and all(held for _, held in ran)
    with lock:  # the round gave the model back
        pass


def test_the_hf_engine_cannot_overlap() -> None:
    import pytest

    from sdpo_core.runtime import load_runtime

    with pytest.raises(ValueError, match="'overlap' needs the vllm engine"):
        load_runtime(None, engine="hf", schedule="overlap")
    with pytest.raises(ValueError, match="one of 'auto', 'lockstep', 'overlap'"):
        load_runtime(None, engine="vllm", schedule="sometimes")  # type: ignore[arg-type]


def test_a_problem_waiting_for_the_model_is_not_busy_training(runtime) -> None:
    """A slot's update is timed once it holds the model: the time it waits behind another
    problem's update counts as that problem's training, not twice."""
    import time

    cfg = runtime.defaults.merged({**FAST, "seed": 3})
    view = runtime.for_slot(1)
    one_step(view, cfg)  # warm: the slot exists
    before = runtime.phases.busy_seconds()["training"]
    done = threading.Event()
    with runtime.trainer.lock:  # another problem's update, 1 s long, not timed here
        threading.Thread(target=lambda: (one_step(view, cfg), done.set())).start()
        time.sleep(1.0)
    assert done.wait(30)
    spent = runtime.phases.busy_seconds()["training"] - before
    view.trainer.release()
    runtime.trainer.activate(0)  # the session's runtime as the other tests expect it
    assert 0 < spent < 0.9, spent
