"""extension/ is generated from sql/ and installs the same schema as `flux db migrate`."""

from __future__ import annotations

import psycopg

from flux.store._extension import extension_dir, render
from flux.store._migrate import migrate, migrations
from tests.store.test_migrate import shape


def test_extension_files_match_sql_dir() -> None:
    for name, text in render().items():
        on_disk = (extension_dir() / name).read_text(encoding="utf-8")
        assert on_disk == text, f"extension/{name} is stale: run `python -m flux.store._extension`"
    # Beside the generated files: the C sources and their shared header (flux/store/_native.py).
    generated = [p.name for p in extension_dir().iterdir() if p.suffix not in (".c", ".h")]
    assert sorted(generated) == sorted(render())


def test_create_extension_gives_the_migrated_schema(empty_db: str, db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION flux")
        versions = [r[0] for r in conn.execute("SELECT version FROM flux.migrations ORDER BY 1")]
    assert versions == [m.version for m in migrations()]
    assert migrate(empty_db) == []  # flux db migrate sees the extension's versions as applied
    assert shape(empty_db) == shape(db)
