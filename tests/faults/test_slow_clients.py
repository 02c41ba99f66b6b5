"""Slow clients (a slowloris): connections that trickle their headers or their body hold a
connection each, never one of the ``[server] max_inflight`` execution slots, so everyone
else is served beside them; a body that has not arrived within ``[server] body_timeout`` is
answered 408, recorded, and its connection closed (issue 20, item 2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.faults.conftest import fault_shop

pytestmark = pytest.mark.fault

TIGHT = """
[server]
max_inflight = 2
body_timeout = "4s"
"""


@contextlib.asynccontextmanager
async def slow_clients(url: str, *, bodies: int, headers: int
                       ) -> AsyncIterator[list[tuple[asyncio.StreamReader,
                                                     asyncio.StreamWriter]]]:
    """``bodies`` connections that send a POST's headers and one byte of its 100-byte body,
    and ``headers`` that send half a request line; none sends more until closed."""
    parts = urlsplit(url)
    opened = []
    try:
        for n in range(bodies + headers):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            if n < bodies:
                writer.write(b"POST /signup HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            else:
                writer.write(b"POST /signup HTT")
            await writer.drain()
            opened.append((reader, writer))
        yield opened
    finally:
        for _, writer in opened:
            writer.close()


async def test_slow_bodies_hold_no_slot_and_time_out_as_recorded_408s(
        db: str, provider: Any, tmp_path: Path, shop_secret: None) -> None:
    async with fault_shop(db, provider, tmp_path / "shop", toml=TIGHT) as shop, \
            slow_clients(shop.url, bodies=10, headers=10) as slow:
        # Twenty stalled clients against two slots: every ordinary request is still run.
        answers = [await shop.post("signup", {"email": f"fast{n}@slow.test"})
                   for n in range(6)]
        assert [status for status, _, _ in answers] == [200] * 6, answers
        assert shop.runtime.refused["overloaded"] == 0
        # The stalled bodies are cut off at the deadline: a 408 each, and a record.
        reader, _ = slow[0]
        head = await asyncio.wait_for(reader.read(65536), 60)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        request_id = next(line.split(b":", 1)[1].strip().decode()
                          for line in head.split(b"\r\n")
                          if line.lower().startswith(b"x-flux-request-id:"))
        record = shop.record(request_id)
        assert (record["status"], record["http_status"]) == ("error", 408)
        assert record["error"]["code"] == "request_timeout"
        await asyncio.wait_for(reader.read(), 60)  # the rest of the answer, then EOF:
        assert reader.at_eof()  # the server closed the connection
