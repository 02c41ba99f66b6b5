"""Redaction: what Flux strips from a request, response or log line before it is stored.

A record is only useful if it can be kept, shared and replayed, and it can only be kept if no
credential is in it. Sensitive headers and JSON fields are replaced by a *keyed* fingerprint
rather than a fixed placeholder, so two records can still be compared ("the same token was
sent both times") without the store ever holding the value: the key never leaves the project,
so nobody holding only the store can brute-force short values back out of it.

A secret value is found in the forms it travels in too: URL-encoded (a query string, a form
body), and base64 — alone, or inside ``Basic`` credentials (``user:secret``), where it can
start at any of three byte offsets; the characters that depend on the secret alone are
matched, for secrets long enough that such a run cannot turn up by chance.

Everything here is pure logic except :func:`load_policy`, which reads (or creates) the key.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any
from urllib.parse import quote, quote_plus

import orjson

from flux._errors import ConfigError

KEY_ENV = "FLUX_REDACTION_KEY"
KEY_FILE = "redaction.key"
PREVIEW_CHARS = 1024
MIN_SECRET_CHARS = 4  # shorter "secrets" (a "1", an "on") would shred every stored text
MIN_ENCODED_CHARS = 8  # a shorter base64 run of a secret could match ordinary text
_INFINITE = (float("inf"), float("-inf"))
_MARKER = re.compile(r"\[redacted hmac-sha256:[0-9a-f]{16}\]")


@dataclass(frozen=True)
class RedactionPolicy:
    """What to hide and how much to keep; one per project, shared by every recorder."""

    key: bytes = field(repr=False)  # never in a repr, a log line or a traceback
    headers: frozenset[str] = frozenset(
        {"authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key",
         "x-auth-token"}
    )
    fields: frozenset[str] = frozenset(
        {"password", "secret", "token", "api_key", "card_number", "cvc", "access_token",
         "refresh_token", "client_secret"}
    )
    max_body_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        # Names are matched case-insensitively, so store them once in the form we compare.
        object.__setattr__(self, "headers", frozenset(h.lower() for h in self.headers))
        object.__setattr__(self, "fields", frozenset(f.lower() for f in self.fields))

    def fingerprint(self, value: str | bytes) -> str:
        """A short keyed digest: equal values match across records, the value stays hidden."""
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        return "hmac-sha256:" + hmac.new(self.key, data, hashlib.sha256).hexdigest()[:16]

    def marker(self, value: str | bytes) -> str:
        """The string stored in place of a hidden value."""
        return f"[redacted {self.fingerprint(value)}]"

    def redact_headers(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        secrets: Iterable[str] = (),
    ) -> dict[str, str]:
        """Lower-cased names; repeated headers joined with ", "; sensitive values fingerprinted.

        Each value of a repeated sensitive header gets its own marker, so one cookie that is
        the same in two records still shows the same fingerprint. ``secrets`` are scrubbed
        from the other values: a secret sent in a custom header is still a secret.
        """
        pattern = _secret_pattern(secrets)
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        out: dict[str, str] = {}
        size = 0  # what cap_headers would count, counted on the way
        sensitive = self.headers
        for name, value in pairs:
            lname = name.lower()
            if lname in sensitive:
                value = self.marker(value)
            elif pattern is not None:
                value = pattern.sub(self._mark_match, value)
            if lname in out:
                out[lname] = f"{out[lname]}, {value}"
                size += 2 + len(value)
            else:
                out[lname] = value
                size += len(lname) + len(value)
        return out if size <= self.max_body_bytes else self.cap_headers(out)

    def cap_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` unchanged if they fit in ``max_body_bytes``, as a body must; else each
        value cut to a preview and, past the cap, the rest left out — with the
        ``x-flux-truncated`` entry saying how much was there. An anonymous client's 800 KB
        of headers then costs the store what a capped body costs."""
        size = sum(len(k) + len(v) for k, v in headers.items())
        if size <= self.max_body_bytes:
            return headers
        out: dict[str, str] = {}
        used, dropped = 0, 0
        for name, value in headers.items():
            if len(value) > PREVIEW_CHARS:
                value = f"{value[:PREVIEW_CHARS]}… ({len(value)} characters)"
            if used + len(name) + len(value) > self.max_body_bytes:
                dropped += 1
                continue
            out[name] = value
            used += len(name) + len(value)
        out["x-flux-truncated"] = (f"{len(headers)} headers of {size} characters; "
                                   f"{dropped} left out, longer values cut")
        return out

    def redact_body(self, body: Any) -> Any:
        """A copy of JSON-able ``body`` with the value of every sensitive key replaced."""
        if isinstance(body, dict):
            return {
                k: self._hide(v) if self._sensitive(k) else self.redact_body(v)
                for k, v in body.items()
            }
        if isinstance(body, list | tuple):
            return [self.redact_body(v) for v in body]
        return body

    def cap(self, body: Any) -> Any:
        """``body`` unchanged if its JSON fits in ``max_body_bytes``, else a truncation marker.

        The marker keeps the size and the SHA-256 of the full serialisation, so a replay can
        still tell whether it produced the very same body.
        """
        if body is None or isinstance(body, bool | int | float):
            return body
        if isinstance(body, str) and len(body) * 4 <= self.max_body_bytes:
            return body  # even all 4-byte characters would fit
        try:  # orjson: this runs for every recorded body, on the request path
            if len(orjson.dumps(body, default=str)) <= self.max_body_bytes:
                return body
        except (TypeError, orjson.JSONEncodeError):
            pass  # what orjson refuses (lone surrogates, odd keys) takes the careful path
        text = json.dumps(body, separators=(",", ":"), default=str, ensure_ascii=False)
        data = text.encode("utf-8", "surrogatepass")
        if len(data) <= self.max_body_bytes:
            return body
        return {
            "_flux_truncated": True,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "preview": text[:PREVIEW_CHARS],
        }

    def scrub_text(self, text: str, secrets: Iterable[str]) -> str:
        """``text`` with every occurrence of each secret value (4+ chars) replaced by a marker.

        All secrets are replaced in one left-to-right pass, longest first, so a secret that
        contains another is hidden whole, and a marker is never scanned again.
        """
        pattern = _secret_pattern(secrets)
        return text if pattern is None else pattern.sub(self._mark_match, text)

    def scrub(self, value: Any, secrets: Iterable[str]) -> Any:
        """``value`` (any JSON-able structure) with every secret value scrubbed from every
        string in it; no redaction of fields, no cap. The executor's last pass over a whole
        record, so a secret that reached a span message or a log is still caught."""
        pattern = _secret_pattern(secrets)
        return value if pattern is None else self._scrub(value, pattern)

    def prepare(self, body: Any, secrets: Iterable[str] = (), *, fresh: bool = False) -> Any:
        """The one call a recorder makes per stored body: redact, scrub secrets, cap.

        Besides strings, keys and numbers are scrubbed too, and anything that is not JSON is
        turned into the text ``json.dumps(default=str)`` would store, so that what is checked
        here is exactly what reaches the store. What is returned never shares a container
        with ``body`` (the handler may change its own later) — unless ``fresh`` says that
        ``body`` was made for the record alone (decoded or encoded by Flux just before),
        when a plain body is returned as it is rather than copied.
        """
        pattern = _secret_pattern(secrets)
        if pattern is None:
            kind = type(body)
            if body is None or kind is str or kind is int or kind is bool or kind is float:
                return self.cap(body)  # nothing to redact in a scalar
            if fresh and (kind is dict or kind is list):
                # Made for the record alone: no copy; and past a few hundred bytes no walk
                # in Python to look for a field to hide — orjson's bytes are searched for
                # each name as a key (a small body is walked: that costs less).
                data = _strict_dumps(body)
                if data is not None and (self._clean(body, 0) if len(data) < 512 else
                                         not _names_a_field(data, self.fields)):
                    return body if len(data) <= self.max_body_bytes else self.cap(body)
            if (kind is dict or kind is list) and self._clean(body, 0):
                # Plain JSON with no field to hide (most bodies): a walk that builds
                # nothing, then orjson gives the size the cap needs and a fresh copy.
                try:
                    data = orjson.dumps(body)
                except orjson.JSONEncodeError:
                    pass  # an integer beyond 64 bits, a lone surrogate: the walk below
                else:
                    if len(data) <= self.max_body_bytes:
                        return body if fresh else orjson.loads(data)
            # One walk redacts and tells whether the copy is plain JSON (then scrubbing
            # without secrets would change nothing).
            redacted, plain = self._redact_plain(body, 0)
            return self.cap(redacted if plain else self._scrub(redacted, None))
        return self.cap(self._scrub(self.redact_body(body), pattern))

    def _clean(self, body: Any, depth: int) -> bool:
        """Whether ``body`` is JSON's own types only (finite numbers, text keys) with no
        field to hide at any depth: then ``prepare``'s copy is orjson's."""
        if depth > 64:
            return False
        fields = self.fields
        if type(body) is dict:
            items: Iterable[Any] = body.values()
            for k in body:
                if type(k) is not str or k.lower() in fields:
                    return False
        else:
            items = body
        for v in items:
            kind = type(v)
            if kind is str or kind is int or kind is bool or v is None:
                continue
            if kind is float:
                if v != v or v in _INFINITE:
                    return False
            elif kind is dict or kind is list or kind is tuple:
                if not self._clean(v, depth + 1):
                    return False
            else:
                return False
        return True

    def _redact_plain(self, body: Any, depth: int) -> tuple[Any, bool]:
        """``redact_body(body)`` and ``_plain_json`` of the result, in one walk."""
        kind = type(body)
        if kind is str or kind is int or body is None or kind is bool or kind is float:
            return body, True
        if kind is dict or isinstance(body, dict):
            out: dict[Any, Any] = {}
            plain = depth <= 64
            for k, v in body.items():
                if isinstance(k, str):
                    if k.lower() in self.fields:
                        out[k] = self._hide(v)  # a marker: text
                        continue
                else:
                    plain = False
                out[k], ok = self._redact_plain(v, depth + 1)
                plain = plain and ok
            return out, plain
        if isinstance(body, list | tuple):
            items = [self._redact_plain(v, depth + 1) for v in body]
            return [v for v, _ in items], depth <= 64 and all(ok for _, ok in items)
        return body, False

    def _sensitive(self, key: Any) -> bool:
        return isinstance(key, str) and key.lower() in self.fields

    def _hide(self, value: Any) -> Any:
        if isinstance(value, str) and _MARKER.fullmatch(value):
            return value  # already redacted (a replayed record): keep its fingerprint
        if isinstance(value, str | bytes):
            return self.marker(value)
        try:  # canonical, so an equal object fingerprints the same whatever its key order
            text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
        except (TypeError, ValueError):  # mixed-type keys cannot be sorted
            text = repr(value)
        return self.marker(text)

    def _mark_match(self, match: re.Match[str]) -> str:
        return self.marker(match.group(0))

    def _scrub(self, value: Any, pattern: re.Pattern[str] | None) -> Any:
        if isinstance(value, dict):
            return {
                self._scrub(_json_key(k), pattern): self._scrub(v, pattern)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._scrub(v, pattern) for v in value]
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            # A secret that user code parsed into a number would otherwise survive as digits.
            text = json.dumps(value)
            if pattern is None or not pattern.search(text):
                return value
            return pattern.sub(self._mark_match, text)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif not isinstance(value, str):
            value = str(value)
        return value if pattern is None else pattern.sub(self._mark_match, value)


# orjson refuses datetimes, dataclasses and subclasses of str, int, dict and list with
# these options: what it writes then is what the record's own encoding writes.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | \
    orjson.OPT_PASSTHROUGH_SUBCLASS


def _strict_dumps(body: Any) -> bytes | None:
    try:
        return orjson.dumps(body, option=_STRICT)
    except TypeError:  # orjson.JSONEncodeError is one
        return None


def _names_a_field(data: bytes, fields: frozenset[str]) -> bool:
    """Whether JSON text from orjson (``data``) may hold a key to hide; False only when it
    holds none. In orjson's text a key is ``"name":`` and a string value's own quotes are
    escaped, so ``"name":`` is found exactly where an object has that key. Names are
    compared as ``str.lower`` compares them: over ASCII text, ``bytes.lower`` is the same;
    anything else (non-ASCII text, a configured name needing escapes) answers True, and the
    caller walks the body as before."""
    needles = _needles(fields)
    if needles is None or not data.isascii():
        return True
    lowered = data.lower()
    return any(lowered.find(needle) >= 0 for needle in needles)


@functools.lru_cache(maxsize=64)
def _needles(fields: frozenset[str]) -> tuple[bytes, ...] | None:
    """Each field name as orjson writes it as a key; None if a name is not plain ASCII."""
    if not all(name.isascii() and name.isprintable() and '"' not in name and "\\" not in name
               for name in fields):
        return None
    return tuple(f'"{name}":'.encode() for name in fields)


def _plain_json(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is made only of JSON's own types with string keys (then scrubbing
    without secrets would change nothing)."""
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if depth > 64:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_json(v, depth + 1) for v in value)
    return False


def load_policy(state_dir: Path, config: Mapping[str, Any], *, keep_key: bool = True
                ) -> RedactionPolicy:
    """The project's policy: its key plus the ``[record]`` options of flux.toml.

    The key is the UTF-8 text of ``FLUX_REDACTION_KEY`` or of ``<state_dir>/redaction.key``
    (not hex-decoded), so pasting the file's contents into the variable elsewhere keeps
    every fingerprint the same. With ``keep_key`` false (a replay, which stores nothing) a
    missing key file is not created: a throwaway key will do.
    """
    record = config.get("record", {})
    if not isinstance(record, Mapping):
        raise ConfigError("flux.toml: [record] must be a table")
    max_bytes = record.get("max_body_bytes", RedactionPolicy.max_body_bytes)
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
        raise ConfigError(
            f"flux.toml: record.max_body_bytes must be a positive whole number of bytes, "
            f"not {max_bytes!r}"
        )
    key = _load_key(state_dir) if keep_key or os.environ.get(KEY_ENV) is not None or \
        (state_dir / KEY_FILE).exists() else token_hex(32).encode()
    return RedactionPolicy(
        key=key,
        headers=RedactionPolicy.headers | _names(record, "redact_headers"),
        fields=RedactionPolicy.fields | _names(record, "redact_fields"),
        max_body_bytes=max_bytes,
    )


def _names(record: Mapping[str, Any], option: str) -> frozenset[str]:
    names = record.get(option, [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"flux.toml: record.{option} must be a list of names, not {names!r}")
    return frozenset(n.lower() for n in names)


def _load_key(state_dir: Path) -> bytes:
    if (env := os.environ.get(KEY_ENV)) is not None:
        if not env:
            raise ConfigError(f"{KEY_ENV} is set but empty", hint="unset it or give it a value")
        return env.encode("utf-8")
    path = state_dir / KEY_FILE
    try:
        if not path.exists():
            state_dir.mkdir(parents=True, exist_ok=True)
            # Write a private temp file, then link it into place: a concurrent first run
            # either wins the link or reads the winner's key, never a half-written file.
            fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".redaction-")  # mode 0600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(token_hex(32) + "\n")
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read or create the redaction key {path}: {exc}") from exc
    if not key:
        raise ConfigError(f"the redaction key file {path} is empty", hint="delete it to renew it")
    return key.encode("utf-8")


def _secret_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    if not secrets:  # the common case: an execution that read no secret
        return None
    usable = frozenset(s for s in secrets if len(s) >= MIN_SECRET_CHARS)
    return _compiled(usable) if usable else None


@functools.lru_cache(maxsize=256)
def _compiled(secrets: frozenset[str]) -> re.Pattern[str]:
    """One alternation of every form of every secret, longest first."""
    forms = {form for secret in secrets for form in encodings(secret)}
    return re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True))))


def encodings(secret: str) -> set[str]:
    """The forms ``secret`` is found in: itself, URL-encoded (either case of hex, ``+`` or
    ``%20`` for a space), and the runs of base64 (standard and URL-safe) that depend on its
    bytes alone at each of the three offsets it can start at."""
    forms = {secret}
    for encoded in (quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret)):
        forms.add(encoded)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded))
    data = secret.encode("utf-8", "surrogatepass")
    for offset in range(3):
        # Character c of base64 covers bits 6c..6c+5; keep those inside the secret's bytes.
        first = -(-8 * offset // 6)
        last = 8 * (offset + len(data)) // 6
        if last - first < MIN_ENCODED_CHARS:
            continue
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.add(encode(b"\0" * offset + data).decode()[first:last])
    return forms


def _json_key(key: Any) -> str:
    """The key as json.dumps would write it, so scrubbing sees what gets stored."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    return str(key)
