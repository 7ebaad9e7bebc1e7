"""One native thread runs every call that computes with the model.

PyTorch's CPU ops run on OpenMP (libgomp), which keeps a team of helper threads for each
native thread that starts a parallel region. Once a process holds more such threads than it
has cores, every team's helpers stop spin-waiting between regions and sleep, and each of the
thousands of small ops of a step pays for waking them: on 2 cores a forward pass of the
bundled model took 27 ms from a second thread against 15.7 ms from the only one, and a worker
(model loaded in one thread, each problem solved in another) used 49% of its 2 cores. The
worker calls the model from several threads (the loader, one solve thread per problem); the
trainer's and the hf generator's calls all run here instead (they are serial anyway: one
model, one lock), so the process keeps one team. `benchmarks/throughput.py` measures it.

A call made on this thread runs at once (so these calls nest); any other waits its turn and
gets the result or the exception.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

import torch

P = ParamSpec("P")
T = TypeVar("T")


class ModelThread:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="model", daemon=True)
                self._thread.start()
        future: Future[T] = Future()
        self._queue.put((future, functools.partial(fn, *args, **kwargs)))
        return future.result()

    def _loop(self) -> None:
        threads = 0
        while True:
            future, call = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            if torch.get_num_threads() != threads:  # set since (SDPO_CPU_THREADS): apply here
                threads = torch.get_num_threads()
                torch.set_num_threads(threads)
            try:
                future.set_result(call())
            except BaseException as exc:  # the caller raises it
                future.set_exception(exc)


MODEL_THREAD = ModelThread()


def on_model_thread(fn: Callable[P, T]) -> Callable[P, T]:
    """Run every call of `fn` on the model thread."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return MODEL_THREAD.run(fn, *args, **kwargs)

    return wrapper
