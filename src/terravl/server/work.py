"""Running CPU-heavy work off the event loop with a bounded queue, so one slow request never blocks the others and
overload is answered at once (503 with ``Retry-After``) instead of piling up requests in memory."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class Overloaded(Exception):
    """More requests are waiting than the queue holds."""

    def __init__(self, retry_after: int = 1):
        super().__init__("the server is busy; retry shortly")
        self.retry_after = retry_after


class WorkPool:
    """A thread pool of ``workers`` threads that admits at most ``workers + queue`` jobs at a time."""

    def __init__(self, workers: int = 2, queue: int = 64, name: str = "terravl-work"):
        self.workers, self.capacity = int(workers), int(workers) + int(queue)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` in a worker thread; raises :class:`Overloaded` when the queue is full."""
        with self._lock:
            if self._pending >= self.capacity:
                raise Overloaded()
            self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            with self._lock:
                self._pending -= 1

    def shutdown(self) -> None:
        """Finish the jobs already admitted, then stop the threads."""
        self._pool.shutdown(wait=True)
