"""Conversations of ``POST /api/v1/chat``, kept server-side by an opaque session id, with bounded memory and disk.

A session holds a :class:`~terravl.tasks.chat.ChatState` (itself bounded: its last turns only) and a folder under
the service's temporary folder with its images (uploads, or indexed tiles written out with their georeference).
The store keeps at most ``max_sessions``: a new one beyond that expires the least recently used; a session idle
for ``idle_seconds`` expires too. An expired session's folder is deleted, and its id answers 404 like an unknown
one. A session's turns run one at a time (its lock); turns of different sessions run in parallel.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from terravl.server.errors import NotFound, Unavailable
from terravl.tasks.chat import ChatState

MAX_SESSIONS = 64
"""Conversations kept at once (each may hold two uploads on disk: the upload limit bounds their size)."""
IDLE_SECONDS = 30 * 60
"""A conversation not used for this long expires."""
SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Session:
    """One conversation: its id, state, folder of images, and when it was last used."""

    id: str
    folder: Path
    state: ChatState | None = None
    used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while a turn runs: the session's turns are sequential, and a busy session is never expired."""


class ChatSessions:
    """The bounded session store (see the module's docstring). ``clock`` is for tests."""

    def __init__(self, folder: Path, max_sessions: int = MAX_SESSIONS, idle_seconds: float = IDLE_SECONDS,
                 router: Any = None, clock: Callable[[], float] = time.monotonic):
        if max_sessions < 1 or idle_seconds <= 0:
            raise ValueError("max_sessions must be at least 1 and idle_seconds positive")
        self.folder = Path(folder)
        self.router = router
        """The instruction router every conversation shares (a model, a :class:`~terravl.tasks.chat.Lazy`, or
        None for the shipped one)."""
        self.max_sessions, self.idle_seconds, self.clock = int(max_sessions), float(idle_seconds), clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def create(self) -> Session:
        """A new, empty session (its state is set by the first turn), expiring the idle and, beyond the limit,
        the least recently used ones first. All sessions busy at the limit: :class:`Unavailable` (503)."""
        with self._lock:
            self._expire_idle()
            while len(self._sessions) >= self.max_sessions:
                victim = next((s for s in self._sessions.values() if not s.lock.locked()), None)
                if victim is None:
                    raise Unavailable("too many conversations are running; retry shortly", retry_after=5)
                self._drop(victim)
            session = Session(uuid.uuid4().hex, self.folder / uuid.uuid4().hex, used=self.clock())
            session.folder.mkdir(parents=True)
            self._sessions[session.id] = session
            return session

    def get(self, session_id: str) -> Session:
        """The live session ``session_id`` (now its most recently used), or :class:`NotFound` naming ``session``
        when it is unknown, malformed or expired."""
        with self._lock:
            self._expire_idle()
            session = self._sessions.get(session_id) if SESSION_ID.match(session_id or "") else None
            if session is None:
                raise NotFound("session", "no such conversation (unknown, or expired after "
                                          f"{self.idle_seconds / 60:g} minutes idle or to make room); start a new "
                                          "one by leaving session out")
            session.used = self.clock()
            self._sessions.move_to_end(session.id)
            return session

    def alive(self, session: Session) -> bool:
        """Whether ``session`` is still in the store (checked under its lock: it may have expired between
        :meth:`get` and the lock)."""
        with self._lock:
            return self._sessions.get(session.id) is session

    def discard(self, session: Session) -> None:
        """Remove a session whose first turn failed (nothing to continue)."""
        with self._lock:
            if self._sessions.get(session.id) is session:
                self._drop(session)

    def touch(self, session: Session) -> None:
        with self._lock:
            session.used = self.clock()

    def close(self) -> None:
        with self._lock:
            for session in list(self._sessions.values()):
                self._drop(session)

    def _expire_idle(self) -> None:
        now = self.clock()
        for session in [s for s in self._sessions.values() if now - s.used > self.idle_seconds]:
            if not session.lock.locked():
                self._drop(session)

    def _drop(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        shutil.rmtree(session.folder, ignore_errors=True)
