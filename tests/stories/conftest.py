"""What every story shares: the outside world a story's handlers call (tests/stories/_world.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.stories._world import Provider


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    """A loopback payment provider that counts every request it receives."""
    world = Provider()
    await world.start()
    try:
        yield world
    finally:
        await world.stop()
