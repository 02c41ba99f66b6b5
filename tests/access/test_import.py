"""A record file is input from elsewhere (issue 20, item 11): an imported execution is
visibly imported, belongs to the tenant the operator names (never the file's), keeps its
links to other executions aside, and its changes never show in a local row's history or
blame; a malformed, hostile or oversized file is one sentence, exit 1, and nothing of it
is stored."""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg

from tests.fixtures.projects import run_flux
from tests.fixtures.shop import Shop


def flux(shop: Shop, *args: str) -> Any:
    result = run_flux([*args, "--json"], shop.root, env={"DATABASE_URL": shop.db})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(shop: Shop, path: Path) -> str:
    result = run_flux(["record", "import", str(path)], shop.root,
                      env={"DATABASE_URL": shop.db})
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "bug in Flux" not in result.stderr
    return " ".join(result.stderr.split())  # as one line, however the terminal wrapped it


def records(shop: Shop) -> int:
    with psycopg.connect(shop.db) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM flux.trace_requests) + "
                           "(SELECT count(*) FROM flux.state_mutations)").fetchone()
    assert row is not None
    return int(row[0])


async def forged_file(shop: Shop, tmp_path: Path) -> tuple[dict[str, Any], int, str]:
    """A local user, a local failed signup, and a file made from that failure's export that
    claims another tenant, a resume of the local failure, and a later change of the local
    user's plan and email."""
    status, user, _ = await shop.post("signup", {"email": "local@example.com"})
    assert status == 200
    status, _, failed = await shop.post("signup", {"email": "local@example.com"})
    assert status == 500
    exported = run_flux(["record", "export", failed, "-o", str(tmp_path / "f.json")],
                        shop.root, env={"DATABASE_URL": shop.db})
    assert exported.returncode == 0, exported.stderr
    document = json.loads((tmp_path / "f.json").read_text())
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    document["record"].update(request_id=str(uuid.uuid4()), tenant="globex",
                              resumed_from=failed)
    document["mutations"] = [{
        "table_schema": "public", "table_name": "users", "pk": {"id": user["id"]},
        "op": "UPDATE", "old": {"plan": "free", "email": "local@example.com"},
        "new": {"plan": "enterprise", "email": "forged@example.com"},
        "changed_cols": ["email", "plan"], "rolled_back": False, "span_id": None,
        "committed_at": later, "source": "trigger"}]
    return document, user["id"], failed


async def test_an_imported_record_forges_no_local_history(shop: Shop, tmp_path: Path) -> None:
    document, user_id, failed = await forged_file(shop, tmp_path)
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(document))
    done = flux(shop, "record", "import", str(path))
    forged = document["record"]["request_id"]
    assert done["imported"] is True and done["new"] is True and done["tenant"] is None

    blame = flux(shop, "state", "blame", "users", "--id", str(user_id))["columns"]
    assert blame["plan"]["value"] == "free" and blame["email"]["value"] == "local@example.com"
    assert forged not in {c["request_id"] for c in blame.values()}
    history = flux(shop, "state", "history", "users", "--id", str(user_id))["rows"]
    assert forged not in {r["request_id"] for r in history}

    listed = {e["request_id"]: e["imported"] for e in flux(shop, "ls", "--limit", "50")[
        "executions"]}
    assert listed[forged] is True and listed[failed] is False
    why = flux(shop, "why", forged[:18])
    assert why["imported"] is True and why["imported_from"]["file_tenant"] == "globex"
    assert [m["table"] for m in why["mutations"]] == ["users"]  # its own, shown with it
    shown = run_flux(["why", forged[:18]], shop.root, env={"DATABASE_URL": shop.db})
    assert "imported" in shown.stdout

    with psycopg.connect(shop.db) as conn:
        row = conn.execute("SELECT tenant, resumed_from, imported -> 'links' ->> "
                           "'resumed_from', pinned FROM flux.trace_requests "
                           "WHERE request_id = %s", [forged]).fetchone()
        assert row == (None, None, failed, True)  # the file chose neither
        resumable = conn.execute("SELECT resumed_by FROM flux.trace_requests WHERE "
                                 "request_id = %s", [failed]).fetchone()
        assert resumable == (None,)

    # The operator names the tenant; the file's own is only information.
    document["record"]["request_id"] = str(uuid.uuid4())
    path.write_text(json.dumps(document))
    assert flux(shop, "record", "import", str(path), "--tenant", "acme")["tenant"] == "acme"
    with psycopg.connect(shop.db) as conn:
        assert conn.execute("SELECT t.tenant, m.tenant FROM flux.trace_requests t JOIN "
                            "flux.state_mutations m USING (request_id) WHERE "
                            "t.request_id = %s", [document["record"]["request_id"]]
                            ).fetchall() == [("acme", "acme")]
    assert "printable" in refused_tenant(shop, path, "acme\x9b")

    # A success planted just before the local failure is not what `why` compares it with.
    with psycopg.connect(shop.db) as conn:
        ok, failed_at = conn.execute(
            "SELECT (SELECT request_id::text FROM flux.trace_requests WHERE status = 'ok' "
            "AND function = 'signup'), (SELECT started_at FROM flux.trace_requests WHERE "
            "request_id = %s)", [failed]).fetchone() or (None, None)
    assert ok is not None and failed_at is not None
    assert flux(shop, "why", failed[:18])["departure"]["from"] == ok
    planted = json.loads(run_flux(["record", "export", ok], shop.root,
                                  env={"DATABASE_URL": shop.db}).stdout)
    planted["record"].update(request_id=str(uuid.uuid4()),
                             started_at=(failed_at - dt.timedelta(milliseconds=1)).isoformat())
    path.write_text(json.dumps(planted))
    flux(shop, "record", "import", str(path))
    assert flux(shop, "why", failed[:18])["departure"]["from"] == ok


def refused_tenant(shop: Shop, path: Path, tenant: str) -> str:
    result = run_flux(["record", "import", str(path), "--tenant", tenant], shop.root,
                      env={"DATABASE_URL": shop.db})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr  # usage
    return " ".join(result.stderr.split())


async def test_a_malformed_record_file_is_one_sentence_and_nothing_stored(
        shop: Shop, tmp_path: Path) -> None:
    document, _, _ = await forged_file(shop, tmp_path)
    before = records(shop)

    def variant(change: Any) -> str:
        doc = copy.deepcopy(document)
        doc["record"]["request_id"] = str(uuid.uuid4())
        change(doc)
        return json.dumps(doc)

    cases = {
        "{nope": "is not JSON",
        "[1, 2]": "is not a Flux record file",
        '{"format": "flux-record", "version": 1, "record": '
        + "[" * 200_000 + "]" * 200_000 + "}": "nests too deeply",
        variant(lambda d: d["record"].update(http_status="500")): "record.http_status",
        variant(lambda d: d["record"].update(request_id="../../etc")): "record.request_id",
        variant(lambda d: d["record"].update(status=None)): "record.status",
        variant(lambda d: d["record"].pop("started_at")): "record.started_at",
        variant(lambda d: d["record"].update(spans={"a": 1})): "record.spans",
        variant(lambda d: d["record"].update(duration_ms=True)): "record.duration_ms",
        variant(lambda d: d.update(mutations={"x": 1})): "mutations is not a list",
        variant(lambda d: d["mutations"][0].update(op="DROP")): "mutations[0].op",
        variant(lambda d: d["mutations"][0].update(pk=[1])): "mutations[0].pk",
        variant(lambda d: d["mutations"][0].update(committed_at=7)): "committed_at",
        # valid in form, refused by PostgreSQL at the second change: nothing half-stored
        variant(lambda d: d["mutations"].append({**d["mutations"][0],
                                                 "new": {"x": "a\u0000b"}})): "nothing of it",
    }
    for i, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.json"
        path.write_text(text)
        message = refused(shop, path)
        assert expected in message, (expected, message)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{}")
    assert "not UTF-8" in refused(shop, tmp_path / "bin.json")
    assert "no such file" in refused(shop, tmp_path / "missing.json")

    # A size cap, configurable: over it, the file is not even read.
    toml = shop.root / "flux.toml"
    toml.write_text(toml.read_text() + "\n[record]\nimport_max_bytes = 2000\n")
    big = tmp_path / "big.json"
    big.write_text(variant(lambda d: d["record"].update(logs=["x" * 5000])))
    assert "over the 2,000" in refused(shop, big)
    assert records(shop) == before
