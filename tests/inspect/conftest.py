"""The inspect commands answer the same whichever way row changes were captured."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["trigger", "wal"])
def capture_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)
