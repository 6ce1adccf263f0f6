"""Work that runs in a worker thread while the caller goes on.

XLA releases the GIL while it compiles and runs, so on the 2-core reference machine an
independent experiment, or the compilation of a program needed later, proceeds in a worker
thread while the main thread computes. The numbers are those of a run in the foreground: the
same programs on the same keys. All jobs share :data:`Background.WORKERS` threads and start in
the order submitted.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Background", "compile_ahead", "wait_all"]


class Background:
    """``fn(*args, **kwargs)`` in a worker thread, started now; :meth:`result` waits for it.

    Attributes:
        seconds: the job's own wall time once it has finished (``nan`` before).
    """

    WORKERS = 2  # one per core of the reference machine
    _pool: concurrent.futures.ThreadPoolExecutor | None = None
    _lock = threading.Lock()

    def __init__(self, fn: Callable, /, *args, **kwargs):
        with Background._lock:
            if Background._pool is None:
                Background._pool = concurrent.futures.ThreadPoolExecutor(
                    self.WORKERS, "odesde-background")
        self.seconds = float("nan")
        self._future = Background._pool.submit(self._timed, fn, args, kwargs)

    def _timed(self, fn, args, kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds = time.perf_counter() - start
        return out

    def result(self) -> Any:
        """The return value (an exception of the job is raised here)."""
        return self._future.result()


def compile_ahead(programs: Iterable[tuple[str, Any, tuple]]) -> dict[str, Background]:
    """Compiles jitted programs ahead of time, each as a :class:`Background` job.

    ``jitted.lower(*args).compile()`` fills the compilation cache that a later call
    ``jitted(*same-structure args)`` hits. Wait for the jobs (:func:`wait_all`) before the first
    of those calls: a program still compiling would otherwise be compiled a second time.

    Args:
        programs: ``(label, jitted, args)`` triples, in the order of need.

    Returns:
        ``{label: job}``, in the same order.
    """
    return {label: Background(lambda f=fn, a=args: f.lower(*a).compile())
            for label, fn, args in programs}


def wait_all(jobs: Mapping[str, Background]) -> dict[str, float]:
    """Waits for every job; returns each one's seconds. A failed job raises ``RuntimeError``
    naming its label."""
    seconds = {}
    for label, job in jobs.items():
        try:
            job.result()
        except Exception as err:
            raise RuntimeError(f"background job {label!r} failed: {err}") from err
        seconds[label] = job.seconds
    return seconds
