"""``flux.replay._debug``: the facts the debugger shows, read from a fixed record file (a checkout
whose payment provider answered 429), with no terminal and no database."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux.replay._debug import DebugData, diff_records, load_debug, mutation_changes, pretty_sql
from flux.store._portable import RecordFileError

HERE = Path(__file__).resolve().parent
FAILED = HERE / "checkout_failed.json"
OK = HERE / "checkout_ok.json"


@pytest.fixture
def failed() -> DebugData:
    return load_debug(None, str(FAILED))  # no project: a file needs no database


def names(data: DebugData) -> list[str]:
    return [span["name"] for span in data.spans]


def test_spans_in_execution_order(failed: DebugData) -> None:
    assert names(failed) == ["POST /checkout", "checkout", "db.select(users)",
                             "db.insert(orders)", "payments.charge",
                             "http.post 127.0.0.1:4010/v1/charges"]
    assert failed.from_file


def test_first_error_is_where_the_failure_began(failed: DebugData) -> None:
    index = failed.first_error()
    assert index is not None
    assert failed.spans[index]["kind"] == "http"
    assert failed.culprits == {failed.spans[index]["id"]}
    ok = load_debug(None, str(OK))
    assert ok.first_error() is None


def test_search_wraps_and_continues(failed: DebugData) -> None:
    first = failed.search("DB.")
    assert first is not None and names(failed)[first] == "db.select(users)"
    second = failed.search("db.", first)
    assert second is not None and names(failed)[second] == "db.insert(orders)"
    assert failed.search("db.", second) == first
    assert failed.search("nothing like it") is None
    assert failed.search("  ") is None


def test_function_span_shows_request_and_response(failed: DebugData) -> None:
    facts = failed.detail(failed.spans[1])
    assert facts["input"] == {"user_id": 1, "amount_cents": 900}
    assert facts["output"]["error"]["code"] == "payment_failed"
    assert facts["where"] == "functions/checkout.py:19"


def test_db_span_shows_pretty_sql_and_rows(failed: DebugData) -> None:
    facts = failed.detail(failed.spans[3])
    sql = facts["sql"]
    assert sql["text"].startswith("INSERT INTO orders")
    assert "$1" in sql["text"] and "RETURNING id" in sql["text"]
    assert sql["params"] == [1, 900]
    assert sql["rows"] == [{"id": 2}] and sql["rowcount"] == 1
    [order] = facts["mutations"]
    assert order["table"] == "public.orders" and order["op"] == "INSERT"
    assert order["rolled_back"]
    assert order["changes"]["status"] == (None, "pending")
    assert order["changes"]["amount_cents"] == (None, 900)


def test_http_span_shows_the_exchange(failed: DebugData) -> None:
    index = failed.first_error()
    assert index is not None
    http = failed.detail(failed.spans[index])["http"]
    assert http["method"] == "POST"
    assert http["url"] == "http://127.0.0.1:4010/v1/charges"
    assert http["body"]["amount"] == 900
    assert http["headers"]["authorization"].startswith("[redacted")
    assert http["response"]["status"] == 429
    assert http["response"]["headers"]["retry-after"] == "1"


def test_log_lines_belong_to_their_span() -> None:
    ok = load_debug(None, str(OK))
    checkout = ok.detail(ok.spans[1])
    assert [line["message"] for line in checkout["logs"]] == ["checkout done"]
    assert ok.detail(ok.spans[0])["logs"] == []


def test_mutation_changes_per_operation() -> None:
    assert mutation_changes({"op": "UPDATE", "old": {"a": 1, "b": 2}, "new": {"a": 1, "b": 3},
                             "changed_cols": ["b"]}) == {"b": (2, 3)}
    assert mutation_changes({"op": "DELETE", "old": {"a": 1}, "new": None}) == {"a": (1, None)}


def test_pretty_sql_keeps_what_it_cannot_parse() -> None:
    assert pretty_sql("SELEKT nonsense") == "SELEKT nonsense"
    assert pretty_sql("select a,b from t where x = %s") == \
        "SELECT a,\n       b\nFROM t\nWHERE x = $1"


def test_diff_of_two_files(failed: DebugData) -> None:
    result = diff_records(load_debug(None, str(OK)), failed)
    assert result["summary"]["changed"] >= 1
    assert not result["summary"].get("identical")


def test_not_a_record_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(RecordFileError, match="is not a Flux record file"):
        load_debug(None, str(bad))
