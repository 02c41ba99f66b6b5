"""``flux why ID --ai``: a model's reading of a failure, from the record and nothing else.

Flux's own ``why`` is deterministic and stays the report. This module gathers what a model
needs to propose a fix — the ``why`` facts, the failing call's tape entry, the mutations,
the departure from the last success and the source lines around the failing line — and asks
an OpenAI-compatible chat endpoint (``[ai]`` in flux.toml; a local Ollama, llama.cpp or vLLM
as well as a hosted one) over plain HTTP, streaming the answer as it arrives.

What leaves the house is bounded three ways:

- **Only this tenant.** Everything read besides the record itself is read with
  ``same_tenant`` (flux/inspect/_why.py): the last success, earlier answers and similar failures
  of another tenant are never candidates, whatever the reader's role may see.
- **Redacted.** The whole prompt passes through the store's redaction (``redact``, given by
  the caller: sensitive fields fingerprinted, every known secret value scrubbed), source
  lines included, so a key pasted into a comment is hidden too.
- **Capped.** The facts are shrunk to ``max_prompt_chars``; the exchange has a timeout.

A model that cannot be reached, hangs or fails is one sentence in ``error``; the caller
keeps its deterministic report and its exit code. Everything but :func:`ask` and
:func:`read_source` is pure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from flux._errors import ConfigError
from flux._jsoncodec import plain
from flux._project import AiConfig, Project
from flux.inspect._why import explain_failure
from flux.store._lookup import fetch_record

CONTEXT_BEFORE = 12  # source lines shown above the failing line …
CONTEXT_AFTER = 8  # … and below it
MAX_LINE_CHARS = 300
MAX_ANSWER_CHARS = 40_000  # a model that never stops is cut here
HEADING = "AI suggestion"

SYSTEM = (
    "You help an engineer fix a failed request of a backend service. Flux recorded the "
    "execution; you get the facts it recorded and the source lines around the failing line. "
    "Values that were secrets or sensitive fields appear as [redacted hmac-sha256:…] "
    "markers: never guess them. Explain the most likely cause in two or three sentences, "
    "then propose a concrete fix as a short code change to the file shown, and say what you "
    "are unsure of. Use only the facts given; do not invent log lines, values or files."
)

Redact = Callable[[Any], Any]
OnText = Callable[[str], None]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but \t and \n


@dataclass(frozen=True)
class Prompt:
    """The chat messages sent, their size, and whether the facts were cut to fit."""

    messages: list[dict[str, str]]
    chars: int
    truncated: bool


# -- gathering -----------------------------------------------------------------------------


def gather(conn: psycopg.Connection[Any], prefix: str, root: Path) -> dict[str, Any]:
    """The facts of one failed execution, read for sending: the ``why`` report scoped to
    the record's tenant, the failing call's tape entries and the source around the line."""
    record = fetch_record(conn, prefix)
    report = explain_failure(conn, record, same_tenant=True)
    span_id = ((report["root_cause"] or {}).get("span") or {}).get("id")
    tape = [e for e in record.get("tape") or [] if isinstance(e, dict)]
    failing = [e for e in tape if span_id is not None and e.get("span_id") == span_id]
    loc = report["location"]
    return {
        "report": report,
        # No span explains it (a plain exception): the last value that came from outside
        # is what the code was looking at when it broke.
        "tape": plain(failing or tape[-1:]),
        "tape_of": "failing_span" if failing else "last_outside_value",
        "source": read_source(
            root, loc.get("file"), loc.get("line"), loc.get("code_sha"), bool(loc.get("code_dirty"))
        ),
        "secret_names": sorted({str(e.get("key")) for e in tape if e.get("kind") == "secret"}),
    }


def read_source(
    root: Path, file: str | None, line: int | None, code_sha: str | None, dirty: bool
) -> dict[str, Any] | None:
    """The lines around ``file:line``: as committed at ``code_sha`` when the record ran clean
    code, else from the work tree. Never a file outside the project (a record is data and
    may come from elsewhere: flux record import)."""
    if not file or not isinstance(line, int) or line < 1:
        return None
    base = root.resolve()
    path = (base / file).resolve()
    if not path.is_relative_to(base):
        return None
    text, origin = None, "work tree"
    if code_sha and not dirty and re.fullmatch(r"[0-9a-f]{7,64}", code_sha):
        try:
            shown = subprocess.run(
                ["git", "show", f"{code_sha}:./{path.relative_to(base)}"],
                cwd=base,
                capture_output=True,
                timeout=5,
            )
        except (OSError, subprocess.TimeoutExpired):
            shown = None
        if shown is not None and shown.returncode == 0:
            text, origin = shown.stdout.decode("utf-8", "replace"), f"commit {code_sha[:12]}"
    if text is None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    lines = text.splitlines()
    if line > len(lines):
        return None
    first = max(1, line - CONTEXT_BEFORE)
    last = min(len(lines), line + CONTEXT_AFTER)
    return {
        "file": str(path.relative_to(base)),
        "line": line,
        "from": origin,
        "first": first,
        "lines": [lines[i - 1][:MAX_LINE_CHARS] for i in range(first, last + 1)],
    }


def secret_values(
    project: Project, names: list[str], environ: Mapping[str, str] | None = None
) -> set[str]:
    """Every secret value this machine knows for the project: each ``[secrets]`` entry,
    each secret the execution read, the model's own API key and Flux's own keys — all
    scrubbed from what is sent."""
    env = os.environ if environ is None else environ
    mapping = {str(k): str(v) for k, v in (project.raw.get("secrets") or {}).items()}
    variables = {
        *mapping.values(),
        *(mapping.get(n, n) for n in names),
        "FLUX_ADMIN_TOKEN",
        "FLUX_REDACTION_KEY",
    }
    if project.ai.api_key_secret:
        variables.add(mapping.get(project.ai.api_key_secret, project.ai.api_key_secret))
    return {value for var in variables if (value := env.get(var))}


def api_key(project: Project, environ: Mapping[str, str] | None = None) -> str | None:
    """The model's API key, read like ``ctx.secrets.get`` reads a secret; None when
    ``[ai]`` names none. Named but unset is the caller's mistake, said in one sentence."""
    name = project.ai.api_key_secret
    if not name:
        return None
    mapping = {str(k): str(v) for k, v in (project.raw.get("secrets") or {}).items()}
    variable = mapping.get(name, name)
    value = (os.environ if environ is None else environ).get(variable)
    if not value:
        raise ConfigError(
            f"[ai] api_key_secret names {name}, but the environment variable {variable} is not set",
            hint=f"export {variable}=… or remove api_key_secret for a model that needs no key",
        )
    return value


def require(config: AiConfig) -> None:
    """One sentence when ``--ai`` is asked of a project whose ``[ai]`` is off."""
    if not config.enabled:
        raise ConfigError(
            "the AI reading is off: set base_url and model in the [ai] table of flux.toml",
            hint='e.g. [ai] base_url = "http://localhost:11434/v1" and model = "llama3.1"',
        )


# -- the prompt (pure) ---------------------------------------------------------------------


def build_prompt(facts: dict[str, Any], *, redact: Redact, max_chars: int) -> Prompt:
    """The messages for the model, redacted as a whole and cut to ``max_chars``."""
    r = facts["report"]
    cause = r["root_cause"] or {}
    loc = r["location"] or {}
    where = f"{r.get('method') or r.get('kind')} /{r.get('route') or ''}"
    head = [
        f"Failed execution of function `{r.get('function')}` ({where} → {r.get('http_status')}).",
        f"Root cause (Flux classified it as {cause.get('class')}): {cause.get('message')}",
        f"Failing line: {loc.get('file')}:{loc.get('line')} in {loc.get('function')} "
        f"(code {str(loc.get('code_sha') or 'unknown')[:12]}"
        f"{', uncommitted changes' if loc.get('code_dirty') else ''}).",
        f"Flux's own suggestion: {r.get('suggestion')}",
    ]
    source = facts.get("source")
    if source:
        width = len(str(source["first"] + len(source["lines"])))
        body = "\n".join(
            f"{'»' if n == source['line'] else ' '} {n:>{width}} | {text}"
            for n, text in enumerate(source["lines"], source["first"])
        )
        head.append(
            f"\nSource of {source['file']} ({source['from']}), lines "
            f"{source['first']}-{source['first'] + len(source['lines']) - 1}; » marks "
            f"the failing line:\n```python\n{body}\n```"
        )
    else:
        head.append("\n(The source of the failing line is not available here.)")
    dep = r.get("departure")
    detail = {
        "execution": {
            k: r.get(k)
            for k in (
                "request_id",
                "function",
                "kind",
                "method",
                "route",
                "status",
                "http_status",
                "duration_ms",
                "input",
            )
        },
        "root_cause": {
            "class": cause.get("class"),
            "message": cause.get("message"),
            "details": cause.get("details"),
            "span": _span(cause.get("span")),
        },
        "error": r.get("error"),
        "location": loc,
        facts.get("tape_of", "failing_span") + "_tape": facts.get("tape"),
        "mutations": [
            {k: m.get(k) for k in ("table", "pk", "op", "changes", "rolled_back", "file", "line")}
            for m in r.get("mutations") or []
        ],
        "departure_from_last_success": ({k: dep.get(k) for k in dep if k != "at"} if dep else None),
        "similar_failures_seen": len(r.get("similar") or []),
    }
    system = redact(SYSTEM)
    intro = redact("\n".join(head)) + "\n\nThe recorded facts, as JSON:\n"
    room = max_chars - len(system) - len(intro)
    facts_text, cut = _fit(redact(plain(detail)), room)
    user = intro + facts_text
    if len(system) + len(user) > max_chars:  # the head alone is over a tiny cap
        user, cut = user[: max(0, max_chars - len(system))], True
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return Prompt(messages, len(system) + len(user), cut)


def _span(span: dict[str, Any] | None) -> dict[str, Any] | None:
    """The failing span without its HTTP answer (the tape entry beside it carries that)."""
    if not span:
        return None
    kept = {
        k: span.get(k)
        for k in ("name", "kind", "status", "file", "line", "duration_ms", "error", "attrs")
        if span.get(k) is not None
    }
    attrs = kept.get("attrs")
    if isinstance(attrs, dict):
        kept["attrs"] = {k: v for k, v in attrs.items() if k != "response"}
    return kept


def _fit(value: Any, room: int) -> tuple[str, bool]:
    """``value`` as JSON in at most ``room`` characters: long strings and lists shortened
    step by step, then the text cut, marked either way."""
    text = json.dumps(value, indent=1, ensure_ascii=False, default=str)
    if len(text) <= room:
        return text, False
    for chars, items in ((2000, 40), (600, 15), (200, 6), (80, 3)):
        text = json.dumps(_shrink(value, chars, items), indent=1, ensure_ascii=False, default=str)
        if len(text) <= room:
            return text, True
    mark = "\n…(cut to the size cap)"
    return text[: max(0, room - len(mark))] + mark, True


def _shrink(value: Any, chars: int, items: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= chars else f"{value[:chars]}…({len(value) - chars} more)"
    if isinstance(value, dict):
        return {k: _shrink(v, chars, items) for k, v in value.items()}
    if isinstance(value, list):
        kept = [_shrink(v, chars, items) for v in value[:items]]
        return kept + ([f"…({len(value) - items} more)"] if len(value) > items else [])
    return value


# -- asking the model ----------------------------------------------------------------------


def endpoint(config: AiConfig) -> str:
    """The chat completions URL, as sent."""
    return f"{(config.base_url or '').rstrip('/')}/chat/completions"


def shown_url(config: AiConfig) -> str:
    """The base URL as printed: without any user:password part."""
    parts = urllib.parse.urlsplit(config.base_url or "")
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def clean(text: str) -> str:
    """A model's text as it may reach a terminal: no control characters but tab and
    newline (an answer cannot move the cursor or recolour the report)."""
    return _CONTROL.sub("", text)


async def ask(
    config: AiConfig, key: str | None, prompt: Prompt, on_text: OnText | None = None
) -> dict[str, Any]:
    """Send ``prompt``; the ``ai`` document: the answer, or one sentence in ``error`` (with
    whatever part of the answer arrived before it). Never raises for the model's faults."""
    parts: list[str] = []

    def take(text: str) -> None:
        room = MAX_ANSWER_CHARS - sum(map(len, parts))
        text = clean(text)[: max(0, room)]
        if text:
            parts.append(text)
            if on_text is not None:
                on_text(text)

    where = shown_url(config)
    error: str | None = None
    try:
        await asyncio.wait_for(_exchange(config, key, prompt, take), config.timeout_s)
    except TimeoutError:
        error = (
            f"the AI model at {where} did not answer within {config.timeout_s:g}s"
            if not parts
            else f"the AI model at {where} stopped answering after "
            f"{config.timeout_s:g}s, so its suggestion is cut short"
        )
    except _ModelRefused as exc:
        error = f"the AI model at {where} {exc}"
    except ValueError as exc:  # an event line past aiohttp's limit, a broken encoding
        error = f"the AI model at {where} answered something Flux could not read ({exc})"
    except (aiohttp.ClientError, OSError) as exc:
        reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:200]
        error = f"the AI model at {where} could not be reached ({reason})"
    answer = "".join(parts)
    if error is not None and not parts:
        error += ", so there is no AI suggestion; Flux's own report stands"
    return {
        "model": config.model,
        "endpoint": where,
        "answer": answer or None,
        "error": error,
        "complete": error is None,
        "sent_chars": prompt.chars,
        "truncated": prompt.truncated,
    }


class _ModelRefused(Exception):
    """The endpoint answered, but not with a chat completion; ``str`` ends a sentence that
    starts "the AI model at URL"."""


async def _exchange(config: AiConfig, key: str | None, prompt: Prompt, take: OnText) -> None:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if config.stream else "application/json",
    }
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {
        "model": config.model,
        "messages": prompt.messages,
        "stream": config.stream,
        "max_tokens": config.max_tokens,
        "temperature": 0.2,
    }
    # The one deadline is ask's; aiohttp's own default (5 min in all) must not cut first.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, config.timeout_s))
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            endpoint(config), json=body, headers=headers, allow_redirects=False
        ) as response,
    ):
        if response.status >= 300:
            raise _ModelRefused(
                f"answered HTTP {response.status}{_error_text(await response.read())}"
            )
        kind = response.headers.get("Content-Type", "")
        if "text/event-stream" in kind:
            await _read_events(response, take)
            return
        try:
            document = json.loads(await response.read())
            message = document["choices"][0]["message"]
            take(str(message.get("content") or ""))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _ModelRefused(
                "answered something that is not an OpenAI chat completion"
            ) from None


async def _read_events(response: aiohttp.ClientResponse, take: OnText) -> None:
    """Server-sent events of ``chat.completion.chunk``s, each delta handed on as it comes."""
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue  # comments, event names, keep-alives, blank separators
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise _ModelRefused("sent an event that is not JSON") from None
        if isinstance(chunk, dict) and chunk.get("error"):
            raise _ModelRefused(f"failed while answering{_error_text(data.encode())}")
        for choice in (chunk.get("choices") or []) if isinstance(chunk, dict) else []:
            delta = (choice or {}).get("delta") or {}
            if isinstance(delta, dict) and delta.get("content"):
                take(str(delta["content"]))


def _error_text(body: bytes) -> str:
    """`` (what the endpoint said)`` from an OpenAI-style error body, or nothing."""
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        return ""
    return f" ({clean(str(message)).splitlines()[0][:200]})" if message else ""


def reading(
    config: AiConfig, prompt: Prompt, answer: dict[str, Any] | None, *, show_prompt: bool
) -> dict[str, Any]:
    """The ``ai`` key of ``flux why --ai --json``: ``answer`` from :func:`ask`, or (None)
    the description of a prompt that was only shown, not sent."""
    document: dict[str, Any] = (
        answer
        if answer is not None
        else {
            "model": config.model,
            "endpoint": shown_url(config) if config.enabled else None,
            "answer": None,
            "error": None,
            "complete": False,
            "sent_chars": 0,
            "truncated": prompt.truncated,
        }
    )
    document["sent"] = answer is not None
    if show_prompt:
        document["prompt"] = prompt.messages
    return document


def ask_sync(
    config: AiConfig, key: str | None, prompt: Prompt, on_text: OnText | None = None
) -> dict[str, Any]:
    """:func:`ask` for a synchronous caller (the CLI)."""
    return asyncio.run(ask(config, key, prompt, on_text))
