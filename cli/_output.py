"""Rendering shared by every command: one sentence for errors, JSON for machines."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from flux import FluxError

# Control characters other than newline and tab: C0, DEL and C1 (0x9b is an 8-bit CSI).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_C1 = re.compile("[\x7f-\x9f]")


def shorten(value: Any, width: int = 60) -> str:
    """A value on one table row: its text, cut to ``width`` characters with an ellipsis — at
    a word boundary when one is near (``… VALUES (%s, %s)…``, not ``… VAL…``); a
    value without one (an id, a hash) is cut where it must."""
    text = str(value) if not isinstance(value, str) else value
    if len(text) <= width:
        return text
    cut = text[:width - 1]
    space = cut.rfind(" ")
    if space >= width * 2 // 3:  # a word ends near enough: cut there
        cut = cut[:space].rstrip(" ,(")
    return cut + "…"


def visible(text: str) -> str:
    """``text`` with every control character drawn instead of sent to the terminal: a path,
    body or log line that carries an escape sequence (an OSC 52 clipboard write, a cursor
    move that hides a line) is shown as text, never obeyed. C0 characters become their
    Unicode control pictures (ESC is ␛), DEL ␡, C1 characters ``\\x9b``."""
    return _CONTROL.sub(_picture, text)


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)
    return "\u2421" if code == 0x7F else f"\\x{code:02x}"


class SafeConsole(Console):
    """A rich Console that draws control characters visibly in every string it renders —
    what ``print`` is given and the cells of a table alike (both go through render_str)."""

    def render_str(self, text: str, **kwargs: Any) -> Text:  # type: ignore[override]
        return super().render_str(visible(text), **kwargs)


out = SafeConsole(highlight=False, soft_wrap=True)
err = SafeConsole(stderr=True, highlight=False, soft_wrap=True)


def print_json(document: Any) -> None:
    """One JSON document on stdout, as every --json promises (JSON escapes C0 characters
    itself; DEL and C1 are escaped too, so no terminal obeys one)."""
    text = json.dumps(document, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write(_C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")


def print_error(error: FluxError) -> None:
    err.print(f"[bold red]error:[/] {escape(error.message)}")
    if error.hint:
        err.print(f"[dim]hint:[/] {escape(error.hint)}")
