"""The canonical form of an outside call: the one thing its tape key is made of.

A call's key is computed by this module and nowhere else — when the call is recorded, and
when replay, incident replay, resume (rehearsal and run), bisect and ``why`` match or show
it — so a call made with the same secret value always gets the same key, whichever side
made it. Secrets are replaced by their keyed fingerprint *before* the key is made, wherever
they appear: the URL's base, path or query, a header, the body, a SQL parameter.

The secrets are given as ``marks``: each secret value mapped to the marker that stands for
it (``[redacted hmac-sha256:…]``, :meth:`RedactionPolicy.marker`). Recording maps the real
value to its marker; a replay maps the stand-in it handed the code to the marker the tape
recorded for that secret, so the stand-in canonicalises to the very same text. A different
secret value has a different marker: the keys differ and the divergence shows two
fingerprints, never a value.

An HTTP key is ``METHOD URL`` (query parameters given apart from the URL appended to it),
followed by `` +secrets(<fingerprint>,…)`` when secrets travel in the headers or the body —
so a rotated API key is a visible divergence while the volatile headers (the
``Idempotency-Key``, ``traceparent``) never disturb matching. A DB key is the pglast
fingerprint of the statement and a hash of its parameters after the same replacement.

Pure logic, no IO: ``http_key``, ``db_key`` and ``redact`` are what other modules call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

from flux.store._statement import encoded_params_hash, params_hash, sql_info

SecretMarks = Mapping[str, str]  # secret value -> the marker that stands for it
MIN_SECRET_CHARS = 4  # as redaction: shorter "secrets" would shred every text
_UNSET: Any = object()  # db_key's ``encoded`` not given
_FINGERPRINT = re.compile(r"\[redacted (hmac-sha256:[0-9a-f]{16})\]")


def marker_of(fingerprint: str) -> str:
    """The marker for a recorded fingerprint (``hmac-sha256:…``), as redaction writes it."""
    return f"[redacted {fingerprint}]"


def _forms(marks: SecretMarks) -> dict[str, str]:
    """Each secret as it may appear in a call (as is, and URL-encoded), to its marker."""
    forms: dict[str, str] = {}
    for value, mark in marks.items():
        if len(value) < MIN_SECRET_CHARS:
            continue
        for form in (value, quote(value, safe=""), quote_plus(value)):
            forms.setdefault(form, mark)
    return forms


def _pattern(forms: Mapping[str, str]) -> re.Pattern[str] | None:
    if not forms:
        return None
    # Longest first: a secret that contains another is replaced whole.
    return re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True))))


def redact(text: str, marks: SecretMarks) -> str:
    """``text`` with every secret (as is, or URL-encoded) replaced by its marker."""
    if not marks:  # most calls: the execution read no secret
        return text
    forms = _forms(marks)
    pattern = _pattern(forms)
    return text if pattern is None else pattern.sub(lambda m: forms[m.group(0)], text)


def redact_value(value: Any, marks: SecretMarks) -> Any:
    """``value`` (parameters, a JSON body) with secrets replaced in every string in it.
    Returns ``value`` itself when nothing changed, so its hash stays what it was."""
    if not marks:
        return value
    forms = _forms(marks)
    pattern = _pattern(forms)
    if pattern is None:
        return value
    changed = False

    def walk(v: Any) -> Any:
        nonlocal changed
        if isinstance(v, str):
            out = pattern.sub(lambda m: forms[m.group(0)], v)
            changed = changed or out != v
            return out
        if isinstance(v, bytes):
            text = v.decode("utf-8", "replace")
            out = pattern.sub(lambda m: forms[m.group(0)], text)
            if out != text:
                changed = True
                return out
            return v
        if isinstance(v, Mapping):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            items = [walk(x) for x in v]
            return tuple(items) if isinstance(v, tuple) else items
        return v

    result = walk(value)
    return result if changed else value


def carried(values: Iterable[Any], marks: SecretMarks) -> list[str]:
    """The fingerprints of the secrets found in ``values`` (header values, a body), sorted."""
    if not marks:
        return []
    forms = _forms(marks)
    pattern = _pattern(forms)
    if pattern is None:
        return []
    found: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, str):
            for m in pattern.finditer(v):
                found.add(forms[m.group(0)])
        elif isinstance(v, Mapping):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)

    for value in values:
        walk(value)
    return sorted(_FINGERPRINT.sub(r"\1", mark) for mark in found)


def canonical_url(url: str, marks: SecretMarks, params: Any = None) -> str:
    """The URL a call is known by: query parameters given apart appended, secrets replaced."""
    if params:
        pairs = params.items() if isinstance(params, Mapping) else params
        query = urlencode([(str(k), str(v)) for k, v in pairs])
        url = f"{url}{'&' if '?' in url else '?'}{query}"
    return redact(url, marks)


def http_key(
    method: str,
    url: str,
    marks: SecretMarks,
    *,
    params: Any = None,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
) -> str:
    """The tape key of an HTTP call: ``METHOD URL`` over the redacted form, plus the
    fingerprints of secrets sent in headers or body (``+secrets(hmac-sha256:…)``)."""
    key = f"{method.upper()} {canonical_url(url, marks, params)}"
    inside = carried([*(headers or {}).values(), body], marks) if marks else None
    return f"{key} +secrets({','.join(inside)})" if inside else key


def db_key(query: str, params: Any, marks: SecretMarks, *, encoded: Any = _UNSET) -> str:
    """The tape key of a statement: its fingerprint and a hash of its (redacted)
    parameters. ``encoded`` is ``encode(params)`` when the caller has it already (ctx.db
    records it in the span): it is hashed as it is unless a secret had to be replaced."""
    redacted = redact_value(params, marks)
    digest = encoded_params_hash(encoded) if encoded is not _UNSET and redacted is params \
        else params_hash(redacted)
    return f"{sql_info(query).fingerprint}:{digest}"


def endpoint_of(key_or_url: str) -> str:
    """``METHOD URL`` without the secret suffix; a URL whose base is a secret keeps the
    marker as its host (``[redacted hmac-sha256:…]/charges``)."""
    return key_or_url.split(" +secrets(", 1)[0]


def describe_difference(expected: str, actual: str) -> str | None:
    """For a divergence between two keys that differ only in a secret: a sentence naming
    the fingerprints, never a value. None when they differ otherwise."""
    pattern = re.compile(r"hmac-sha256:[0-9a-f]{16}")
    if pattern.sub("#", expected) != pattern.sub("#", actual) or expected == actual:
        return None
    was = sorted(set(pattern.findall(expected)) - set(pattern.findall(actual)))
    now = sorted(set(pattern.findall(actual)) - set(pattern.findall(expected)))
    return (
        f"the same call with a different secret value (recorded {', '.join(was)}, "
        f"now {', '.join(now)})"
    )
