"""Sampling of successful executions: ``[record] sample_rate`` (default 1, everything).

The rule:

- A failure — any error, any 4xx or 5xx — is always recorded in full.
- A success is recorded in full when ``keeps(request_id, rate)``: a hash of its request id
  falls under the rate. The decision depends on the id alone, so every process (and a
  later reader) agrees on it without asking anyone.
- A success that sampling leaves out still commits its data, and its changes are still
  captured (history and blame must stay true). So that no committed change lacks its
  record, it is stored as an **outline** (``sampled = false``): what ran, when, how long,
  its status, code version and links, and its span tree without attributes (the spans
  give each change its file:line) — no request or response bodies, no tape, no logs. An
  HTTP execution's outline is written only when its transaction wrote something; a
  sampled-out request that changed nothing leaves no record at all. A job or cron attempt
  always leaves at least its outline: ``flux queue show`` reads an attempt without a
  record as one whose worker died.
- Replays, resumes and incident replays are never sampled, and an outline cannot be
  replayed (there is no tape).
"""

from __future__ import annotations

import hashlib
from typing import Any


def keeps(request_id: str, rate: float) -> bool:
    """Whether the successful execution ``request_id`` is recorded in full at ``rate``."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def outline_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The span tree of an outline: structure, timing, status and call site only."""
    return [{"id": s["id"], "parent_id": s["parent_id"], "name": s["name"], "kind": s["kind"],
             "start_ms": s["start_ms"], "duration_ms": s["duration_ms"], "status": s["status"],
             "file": s["file"], "line": s["line"]} for s in spans]
