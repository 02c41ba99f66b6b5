"""A function's deadline without a timer per execution.

``asyncio.timeout`` arms a timer on the loop for every execution and cancels it when the
function returns in time, which nearly every one does: two coroutines, a handle and a heap
push and removal per request, for a timer that almost never fires. A ``Deadline`` instead
notes its time in the loop's one ``_Clock``; the clock looks at what it holds once a
``TICK`` while anything is in flight, and arms a timer of its own only for a deadline due
before its next look. So the deadline fires when it is due, as ``asyncio.timeout``'s does
(never a tick late), and a request that ends in time costs a dict entry. On expiry the
running task is cancelled and the ``CancelledError`` leaves the ``with`` as a
``TimeoutError``, exactly as ``asyncio.timeout`` does (``uncancel`` included).
"""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType

TICK = 1.0  # seconds between the clock's looks at the deadlines in flight


class _Clock:
    """The deadlines in flight on one event loop."""

    __slots__ = ("handle", "live", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.live: dict[Deadline, float] = {}
        self.handle: asyncio.TimerHandle | None = None

    def _look(self) -> None:
        self.handle = None
        soon = self.loop.time() + TICK
        due = [d for d, when in self.live.items() if when <= soon]
        for deadline in due:
            deadline._arm(self.live.pop(deadline))
        if self.live:
            self.handle = self.loop.call_later(TICK, self._look)


_last: list[_Clock | None] = [None]  # the clock of the loop a Deadline last ran on
_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clock] = weakref.WeakKeyDictionary()


class Deadline:
    """``with Deadline(seconds):`` inside a task: the task is cancelled once ``seconds``
    have passed, and the ``with`` raises ``TimeoutError`` (``expired()`` then says the
    deadline was this one, not a TimeoutError the code inside raised). ``Deadline(None)``
    has none until ``reschedule`` gives it one."""

    __slots__ = ("_cancelling", "_clock", "_delay", "_expired", "_handle", "_task")

    def __init__(self, delay: float | None) -> None:
        self._delay = delay
        self._expired = False
        self._handle: asyncio.TimerHandle | None = None

    def __enter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline is entered inside a task")
        loop = task.get_loop()
        clock = _last[0]  # nearly always the one loop there is: no weak-dict lookup
        if clock is None or clock.loop is not loop:
            clock = _clocks.get(loop)
            if clock is None:
                clock = _clocks[loop] = _Clock(loop)
            _last[0] = clock
        self._task = task
        self._cancelling = task.cancelling()
        self._clock = clock
        delay = self._delay
        if delay is None:  # no deadline, unless ``reschedule`` sets one
            pass
        elif delay <= TICK:  # due before the clock's next look: a timer of its own
            self._arm(loop.time() + delay)
        else:
            clock.live[self] = loop.time() + delay
            if clock.handle is None:
                clock.handle = loop.call_later(TICK, clock._look)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._clock.live.pop(self, None)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def expired(self) -> bool:
        return self._expired

    def reschedule(self, when: float | None) -> None:
        """Expire at loop time ``when`` instead (None: never), as ``asyncio.Timeout``'s
        does: what the database's availability monitor calls to cut a wait short."""
        self._clock.live.pop(self, None)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if when is not None and not self._expired:
            self._arm(when)

    def _arm(self, when: float) -> None:
        self._handle = self._clock.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        self._task.cancel()
