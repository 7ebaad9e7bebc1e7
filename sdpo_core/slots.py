"""Several problems on one loaded base model.

A worker with concurrency K runs K problems at once on one `Runtime`: each problem in flight
holds a slot, and `Runtime.for_slot(i)` gives its run a view of the shared runtime in which
- the trainer is `SlotTrainer`: every call makes slot i the trainer's active slot (its own
  adapters, optimizer, settings and RNG; sdpo_core/trainer.py) under the trainer's lock, so
  one problem's update never sees another's weights;
- the engine serves slot i's adapter: the `hf` engine batches the generate calls of every
  slot waiting for the model into one call with per-row adapters; the `vllm` engine gives
  each slot its own adapter name on the one server, which batches across adapters while the
  trainer steps.
The lock is first come, first served (`FairLock`), so no problem waits more than one round of
the others. `PhaseClock` measures how much of the wall time each phase kept the worker busy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sdpo_core.config import SDPOConfig

if TYPE_CHECKING:  # the trainer imports this module's lock
    from sdpo_core.trainer import RolloutBatch, SDPOTrainer

PHASES = ("generation", "verification", "training", "export")
Schedule = Literal["auto", "lockstep", "overlap"]
T = TypeVar("T")


class FairLock:
    """A reentrant lock granted in the order it was asked for (threading.Lock promises no
    order: a thread that releases and asks again can take it back at once, starving others)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._waiting: deque[object] = deque()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cv:
            if self._owner == me:
                self._depth += 1
                return
            ticket = object()
            self._waiting.append(ticket)
            while self._owner is not None or self._waiting[0] is not ticket:
                self._cv.wait()
            self._waiting.popleft()
            self._owner, self._depth = me, 1

    @property
    def waiting(self) -> int:
        """Threads queued for the lock now."""
        with self._cv:
            return len(self._waiting)

    def release(self) -> None:
        with self._cv:
            if self._owner != threading.get_ident():
                raise RuntimeError("FairLock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cv.notify_all()

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def let_queued_go_first(lock: FairLock, max_yields: int) -> None:
    """Holding `lock`: hand it to the threads queued for it (problems in their updates, each
    about to generate), at most `max_yields` times, and take it back behind them."""
    for _ in range(max_yields):
        if not lock.waiting:
            return
        lock.release()
        lock.acquire()


class GenerationRounds:
    """Lock-step rounds for an engine in another process (vLLM) that shares its compute with
    the trainer (a CPU host): the problems generate together, each with its own request (the
    server batches them), while the trainer is idle; then each trains. Without it one problem
    generates while another trains, and the two compete for the same cores.

    The first caller of a round waits for the model, letting the problems queued for it (their
    updates) go first; it then releases every caller queued so far, and holds the model until
    all of them have their completions."""

    def __init__(self, lock: FairLock, max_yields: int = 256) -> None:
        self.lock, self.max_yields = lock, max_yields
        self._cv = threading.Condition()
        self._queue: list[threading.Event] = []
        self._leader = False
        self._running = 0

    def run(self, generate: Callable[[], T]) -> T:
        go = threading.Event()
        with self._cv:
            self._queue.append(go)
            lead, self._leader = not self._leader, True
        if not lead:
            go.wait()
            try:
                return generate()
            finally:
                self._done()
        self.lock.acquire()
        try:
            let_queued_go_first(self.lock, self.max_yields)
            with self._cv:
                batch, self._queue, self._leader = self._queue, [], False
                self._running = len(batch)
            for event in batch:
                event.set()
            try:
                return generate()
            finally:
                self._done()
                with self._cv:  # the round ends when every request of it has
                    while self._running:
                        self._cv.wait()
        finally:
            self.lock.release()

    def _done(self) -> None:
        with self._cv:
            self._running -= 1
            self._cv.notify_all()


class PhaseClock:
    """Per phase, the wall time during which at least one problem was in it (thread-safe):
    busy seconds / wall seconds is the phase's busy fraction, at most 1 however many overlap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = dict.fromkeys(PHASES, 0.0)
        self._inflight = dict.fromkeys(PHASES, 0)
        self._since: dict[str, float] = {}

    @contextmanager
    def track(self, phase: str) -> Iterator[None]:
        with self._lock:
            if self._inflight[phase] == 0:
                self._since[phase] = time.monotonic()
            self._inflight[phase] += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight[phase] -= 1
                if self._inflight[phase] == 0:
                    self._busy[phase] += time.monotonic() - self._since.pop(phase)

    def busy_seconds(self) -> dict[str, float]:
        """Seconds each phase has been busy so far (a phase in progress counts up to now)."""
        now = time.monotonic()
        with self._lock:
            return {
                p: b + (now - self._since[p] if p in self._since else 0.0)
                for p, b in self._busy.items()
            }


class SlotTrainer:
    """The shared trainer as one problem sees it: slot `index`, activated under the lock.

    It times its own updates ("training") and adapter saves ("export") once it holds the
    model, so a problem's wait for the others is no phase's busy time (as the engines'
    generate calls)."""

    times_itself = True

    def __init__(self, trainer: SDPOTrainer, index: int, phases: PhaseClock | None = None) -> None:
        self.trainer, self.index = trainer, index
        self.phases = phases or PhaseClock()

    @contextmanager
    def _active(self, phase: str | None = None) -> Iterator[SDPOTrainer]:
        with self.trainer.lock:
            self.trainer.activate(self.index)
            if phase is None:
                yield self.trainer
            else:
                with self.phases.track(phase):
                    yield self.trainer

    # what does not depend on the slot
    @property
    def tokenizer(self) -> Any:
        return self.trainer.tokenizer

    @property
    def context_window(self) -> int | None:
        return self.trainer.context_window

    @property
    def device(self) -> Any:
        return self.trainer.device

    @property
    def cfg(self) -> SDPOConfig:
        slot = self.trainer.slots.get(self.index)
        return slot.cfg if slot is not None else SDPOConfig()

    # what works on the slot
    def reset(self, cfg: SDPOConfig) -> None:
        with self._active() as t:
            t.reset(cfg)

    def encode_chat(self, user_message: str) -> list[int]:
        # in the queue for the model like the update it is for (so a lock-step round waits for
        # it), but with no slot switch: it needs the slot's settings, not its adapter
        with self.trainer.lock:
            return self.trainer.encode_chat(user_message, self.cfg)

    def step(self, batch: RolloutBatch) -> dict[str, float]:
        with self._active("training") as t:
            return t.step(batch)

    def save_adapter(self, path: str | Path) -> None:
        with self._active("export") as t:
            t.save_adapter(path)

    def save_checkpoint(self, path: str | Path) -> None:
        with self._active() as t:
            t.save_checkpoint(path)

    def load_checkpoint(self, path: str | Path) -> None:
        with self._active() as t:
            t.load_checkpoint(path)

    def sequence_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        with self._active() as t:
            return t.sequence_logprobs(prompt_ids, response_ids)

    def release(self) -> None:
        with self.trainer.lock:
            self.trainer.release(self.index)
