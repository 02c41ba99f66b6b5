"""The limits a serving process keeps, read from flux.toml: ``[database] pool_size``,
``pool_timeout`` and ``statement_timeout``, ``[server] max_inflight``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flux._errors import ConfigError, DatabaseUnavailable, Overloaded
from flux._project import parse
from flux.runtime._runtime import Runtime


def project(tmp_path: Path, toml: str) -> Path:
    (tmp_path / "flux.toml").write_text(f'name = "limits"\n{toml}')
    return tmp_path


def test_defaults_size_the_inflight_limit_to_the_pool(tmp_path: Path) -> None:
    runtime = Runtime(parse(project(tmp_path, "")), "")
    assert (runtime.pool_timeout, runtime.statement_timeout, runtime.max_inflight) == \
        (5.0, None, 100)
    runtime = Runtime(parse(project(tmp_path, "[database]\npool_size = 8\n")), "")
    assert runtime.max_inflight == 40


def test_limits_are_read_with_their_units(tmp_path: Path) -> None:
    parsed = parse(project(tmp_path, '[database]\npool_size = 4\npool_timeout = "1500ms"\n'
                                     'statement_timeout = "2m"\n[server]\nmax_inflight = 9\n'))
    assert (parsed.database.pool_size, parsed.database.pool_timeout,
            parsed.database.statement_timeout, parsed.server.max_inflight) == (4, 1.5, 120.0, 9)


@pytest.mark.parametrize(("toml", "message"), [
    ("[database]\npool_size = 0\n", "database.pool_size must be a whole number of at least 1"),
    ('[database]\nstatement_timeout = "soon"\n',
     'database.statement_timeout must be a duration such as "500ms"'),
    ("[database]\npool_timeout = 0\n", "database.pool_timeout must be more than zero"),
    ('[server]\nmax_inflight = "many"\n', "server.max_inflight must be a whole number"),
    ('server = "fast"\n', "[database] and [server] must be tables"),
])
def test_a_bad_limit_is_one_sentence(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(project(tmp_path, toml))


async def test_statement_timeout_reaches_every_pooled_connection(tmp_path: Path, db: str
                                                                 ) -> None:
    root = project(tmp_path, '[database]\nstatement_timeout = "750ms"\n')
    runtime = Runtime(parse(root), f"{db} options='-c lock_timeout=2s'")
    try:
        async with runtime.connection() as conn:
            cur = await conn.execute("SELECT current_setting('statement_timeout'), "
                                     "current_setting('lock_timeout')")
            assert await cur.fetchone() == ("750ms", "2s")  # added to the address's options
    finally:
        await runtime.close()


async def test_a_wait_for_a_connection_ends_overloaded_or_cut_short_when_the_database_goes(
        tmp_path: Path, db: str) -> None:
    """The wait arms no timer of its own (the pool's bounds it), yet it still ends after
    ``pool_timeout`` as Overloaded, and at once as DatabaseUnavailable if the database is
    found down meanwhile."""
    runtime = Runtime(parse(project(tmp_path, '[database]\npool_size = 1\n'
                                              'pool_timeout = "300ms"\n')), db)
    try:
        held = await runtime.acquire()
        with pytest.raises(Overloaded, match=r"came free within 0\.3s"):
            await runtime.acquire()
        runtime.pool_timeout = 60.0  # now only the outage can end the next wait early
        waiter = asyncio.create_task(runtime.acquire())
        while not runtime.availability._waiters:  # until it waits for the pool
            await asyncio.sleep(0)
        runtime.availability._went_down(OSError("the server went away"))
        with pytest.raises(DatabaseUnavailable):
            await asyncio.wait_for(waiter, 10)  # far below the 60 s it would wait otherwise
        await runtime.pool.putconn(held)
    finally:
        await runtime.close()
