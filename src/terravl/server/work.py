"""Running CPU-heavy work off the event loop with a bounded queue, so one slow request never blocks the others and
overload is answered at once (503 with ``Retry-After``) instead of piling up requests in memory.

The service keeps two of these pools (see :class:`~terravl.server.service.Service`): a small *light* one for
search, index listings and thumbnails, and the *heavy* one for image-model routes, so that a burst of expensive
requests can saturate the heavy pool without making search wait behind it. Work that is still queued when its
client disconnects is dropped before it starts.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Protocol, TypeVar

T = TypeVar("T")

DISCONNECT_POLL_S = 0.25
"""How often a request whose job is still queued checks whether its client has gone."""


class Overloaded(Exception):
    """More requests are waiting than the queue holds."""

    def __init__(self, retry_after: int = 1):
        super().__init__("the server is busy; retry shortly")
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client disconnected while its job was still queued: the job was dropped, nothing is answered."""


class Disconnectable(Protocol):
    def is_disconnected(self) -> Awaitable[bool]: ...


class WorkPool:
    """A thread pool of ``workers`` threads that admits at most ``workers + queue`` jobs at a time.

    ``busy`` and ``queued`` count jobs in the threads, not requests: a job whose client has left still counts
    until it ends (or is skipped), so admission reflects the real load."""

    def __init__(self, workers: int = 2, queue: int = 64, name: str = "terravl-work",
                 initializer: Callable[[], Any] | None = None):
        self.name = name
        self.workers, self.capacity = int(workers), int(workers) + int(queue)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=name, initializer=initializer)
        self._lock = threading.Lock()
        self._queued = 0
        self._busy = 0

    @property
    def pending(self) -> int:
        """Jobs admitted and not finished (running or queued)."""
        return self._queued + self._busy

    def stats(self) -> dict[str, Any]:
        """``{busy, queued, capacity, saturated}``: saturated means every worker is busy and jobs are waiting
        (or the queue is full), so a new job will wait or be refused."""
        with self._lock:
            busy, queued = self._busy, self._queued
        return {"busy": busy, "queued": queued, "capacity": self.capacity,
                "saturated": busy >= self.workers and (queued > 0 or busy + queued >= self.capacity)}

    def submit(self, fn: Callable[..., T], *args, cancelled: threading.Event | None = None,
               started: threading.Event | None = None) -> Future:
        """Admit ``fn(*args)`` or raise :class:`Overloaded`; the job is skipped (its future raises
        :class:`ClientGone`) if ``cancelled`` is set before a worker picks it up."""
        with self._lock:
            if self._queued + self._busy >= self.capacity:
                raise Overloaded()
            self._queued += 1

        def job():
            with self._lock:
                self._queued -= 1
                if cancelled is not None and cancelled.is_set():
                    raise ClientGone()
                self._busy += 1
            if started is not None:
                started.set()
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._busy -= 1

        try:
            return self._pool.submit(job)
        except RuntimeError:  # shut down
            with self._lock:
                self._queued -= 1
            raise Overloaded() from None

    async def run(self, fn: Callable[..., T], *args, request: Disconnectable | None = None) -> T:
        """``fn(*args)`` in a worker thread; raises :class:`Overloaded` when the queue is full, and
        :class:`ClientGone` (without running ``fn``) when ``request``'s client leaves while the job is queued."""
        cancelled, started = threading.Event(), threading.Event()
        future = asyncio.wrap_future(self.submit(fn, *args, cancelled=cancelled, started=started))
        try:
            if request is not None:
                while not started.is_set() and not future.done():
                    done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
                    if not done and not started.is_set() and await request.is_disconnected():
                        cancelled.set()
                        future.add_done_callback(_ignore_outcome)
                        raise ClientGone()
            return await asyncio.shield(future)  # a cancelled request must not cancel the executor's future:
        except asyncio.CancelledError:          # the job's counters are settled by the job itself
            cancelled.set()  # skip the job if it has not started
            future.add_done_callback(_ignore_outcome)
            raise

    def shutdown(self) -> None:
        """Finish the jobs already admitted, then stop the threads."""
        self._pool.shutdown(wait=True)


def _ignore_outcome(future: asyncio.Future) -> None:
    """Retrieve a dropped job's outcome so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
