"""Several execution records in one statement: the queue worker's batches.

The queue worker writes the records of jobs that opened no transaction together, in the same
transaction as their jobs' done-marks and its next claim (flux/jobs/_worker.py). This module
only builds the statement: the INSERT of ``insert_record`` (sql/queries/execution.sql) with
one row per record, each bound as ``bind`` binds a single record, so a batch is written
exactly as the same records one by one would be. Records with a failure signature or
rolled-back mutations need more than that INSERT and are stored by ``store`` instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flux.store._queries import load
from flux.store._record import ExecutionRecord, bind

# insert_record as "INSERT … VALUES (…)": the head and the one row.
_SINGLE_ROW = re.compile(r"(?s)^(?P<head>.*?\bVALUES\s*)(?P<row>\(.*\))\s*;?\s*$")


def insert_records(records: Sequence[ExecutionRecord], encoding: str = "utf-8") -> list[bytes]:
    """The statements that insert ``records``, their parameters inlined (send them with
    ``prepare=False``): one multi-row INSERT when ``insert_record`` is a single-row
    ``INSERT … VALUES (…)``, otherwise ``insert_record`` once per record."""
    if any(r.signature is not None or r.mutations for r in records):
        raise ValueError("a record with a signature or mutations is stored by store()")
    text = load("execution").insert_record
    shape = _SINGLE_ROW.match(text.strip())
    if shape is None:
        return [bind(text, r.params(), encoding) for r in records]
    rows = [bind(shape["row"], r.params(), encoding) for r in records]
    return [shape["head"].encode(encoding) + b",\n".join(rows)] if rows else []
