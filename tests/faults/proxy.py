"""A loopback TCP proxy in front of PostgreSQL's Unix socket that can cut one connection
at the commit of an execution — just before the ``INSERT record; COMMIT`` query reaches the
server, or just after the server committed it and before its answer reaches Flux. The two
sides of a commit in doubt, made on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

from flux.store._queries import load
from flux.store._record import _numbered

READY_FOR_QUERY = b"Z\x00\x00\x00\x05"  # the server's ReadyForQuery message: the answer is over
# The record's INSERT, once prepared on a connection, travels as a Bind to this statement
# (flux/store/_record.py prepared_commit) instead of its text.
RECORD_STATEMENT = _numbered(load("execution").insert_record)[0]


class CommitCutter:
    """Serves on 127.0.0.1 in a thread of its own (Flux's setup makes blocking calls through
    it from the test's event loop). ``arm("before" | "after")`` cuts the next commit of an
    execution record."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.port = 0
        self.cuts = 0
        self._armed: str | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-cutter", daemon=True)

    def conninfo(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def start(self) -> CommitCutter:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def arm(self, when: str) -> None:
        with self._lock:
            self._armed = when

    def _take(self, chunk: bytes) -> str | None:
        with self._lock:
            if self._armed and b"COMMIT" in chunk and (
                    b"flux.trace_requests" in chunk or RECORD_STATEMENT in chunk):
                when, self._armed = self._armed, None
                self.cuts += 1
                return when
        return None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        # Stopped: end every connection still open, so no task outlives its loop.
        server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket_path))
        swallow = asyncio.Event()  # the server's answer must not reach the client

        async def upstream() -> None:
            while chunk := await reader.read(65536):
                when = self._take(chunk)
                if when == "before":  # the COMMIT never reaches the server
                    break
                up_writer.write(chunk)
                await up_writer.drain()
                if when == "after":
                    swallow.set()
                    return
            up_writer.close()
            writer.close()

        async def downstream() -> None:
            seen = b""
            while chunk := await up_reader.read(65536):
                if swallow.is_set():
                    seen += chunk
                    if READY_FOR_QUERY in seen:  # committed and answered: now cut
                        break
                    continue
                writer.write(chunk)
                await writer.drain()
            writer.close()
            up_writer.close()

        with contextlib.suppress(OSError, ConnectionError):
            await asyncio.gather(upstream(), downstream())
