"""A function's deadline (flux/runtime/_deadline.py): the loop's one clock instead of a
timer per execution, raising as ``asyncio.timeout`` does."""

from __future__ import annotations

import asyncio

import pytest

from flux.runtime import _deadline
from flux.runtime._deadline import Deadline


async def _never() -> None:
    await asyncio.Event().wait()


def test_a_short_deadline_expires_as_a_timeout_error() -> None:
    async def main() -> Deadline:
        deadline = Deadline(0.01)  # under a tick: its own timer at once
        with pytest.raises(TimeoutError), deadline:
            await _never()
        return deadline

    assert asyncio.run(main()).expired()


def test_a_long_deadline_is_armed_by_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_deadline, "TICK", 0.01)

    async def main() -> tuple[Deadline, int]:
        deadline = Deadline(0.03)  # over a tick: the clock arms it on a later look
        clock = None
        with pytest.raises(TimeoutError), deadline:
            clock = _deadline._clocks[asyncio.get_running_loop()]
            assert deadline in clock.live
            await _never()
        assert clock is not None
        return deadline, len(clock.live)

    deadline, left = asyncio.run(main())
    assert deadline.expired() and left == 0


def test_in_time_leaves_nothing_behind() -> None:
    async def main() -> tuple[Deadline, int, bool]:
        deadline = Deadline(30)
        with deadline:
            await asyncio.sleep(0)
        clock = _deadline._clocks[asyncio.get_running_loop()]
        return deadline, len(clock.live), asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    deadline, live, clean = asyncio.run(main())
    assert not deadline.expired() and live == 0 and clean


def test_a_timeout_error_of_the_code_inside_is_not_the_deadline() -> None:
    async def main() -> Deadline:
        deadline = Deadline(30)
        with pytest.raises(TimeoutError), deadline:
            raise TimeoutError("the code's own")
        return deadline

    assert not asyncio.run(main()).expired()


def test_a_cancel_from_outside_stays_a_cancel() -> None:
    async def inner(started: asyncio.Event) -> None:
        with Deadline(30):
            started.set()
            await _never()

    async def main() -> bool:
        started = asyncio.Event()
        task = asyncio.create_task(inner(started))
        await started.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(main())


def test_reschedule_cuts_a_wait_without_a_deadline_short() -> None:
    """What the availability monitor does to a wait for a pooled connection when the
    database goes down (flux/store/_availability.py)."""

    async def main() -> Deadline:
        deadline = Deadline(None)
        with pytest.raises(TimeoutError), deadline:
            loop = asyncio.get_running_loop()
            loop.call_soon(deadline.reschedule, loop.time())
            await _never()
        return deadline

    assert asyncio.run(main()).expired()
