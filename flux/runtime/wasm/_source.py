"""Where in a Wasm module: what Flux reads from a module's text and bytes so that a trap,
or a host import that failed, is recorded with a function, a line and an offset.

Pure functions over bytes and text: no engine, no IO.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FUNC = re.compile(r"\(\s*func\b")
_CODE_SECTION = 10
_IMPORT_SECTION = 2


@dataclass(frozen=True)
class SourceMap:
    """Function index → line of its ``(func`` (a .wat text only), the line of the function
    exported as ``handle``, and function index → size of its local declarations."""

    lines: dict[int, int]
    handle_line: int
    prologue: dict[int, int]


def source_map(binary: bytes, text: str | None) -> SourceMap:
    imported = imported_functions(binary)
    lines, handle_line = func_lines(text, imported) if text is not None else ({}, 0)
    return SourceMap(lines, handle_line, prologues(binary, imported))


def func_lines(text: str, imported: int) -> tuple[dict[int, int], int]:
    """Function index → line of its ``(func`` in a .wat text (imported functions come
    first in the index space); and the line of the function exported as ``handle``."""
    lines: dict[int, int] = {}
    handle_line = 0
    index = imported
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split(";;", 1)[0]
        if "(import" in code or "(type" in code:
            continue
        for _ in _FUNC.finditer(code):
            lines[index] = number
            index += 1
            if '(export "handle")' in code:
                handle_line = number
    return lines, handle_line


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 at ``pos``: (value, position after it)."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _sections(binary: bytes) -> dict[int, tuple[int, int]]:
    """Section id → (start, end) of its payload; the module is known to be valid."""
    found: dict[int, tuple[int, int]] = {}
    pos = 8  # magic and version
    while pos < len(binary):
        section = binary[pos]
        size, pos = _leb(binary, pos + 1)
        found.setdefault(section, (pos, pos + size))
        pos += size
    return found


def imported_functions(binary: bytes) -> int:
    """How many functions the module imports (they take the first function indices)."""
    span = _sections(binary).get(_IMPORT_SECTION)
    if span is None:
        return 0
    pos, _ = span
    count, pos = _leb(binary, pos)
    functions = 0
    for _ in range(count):
        for _name in range(2):  # module, field
            length, pos = _leb(binary, pos)
            pos += length
        kind = binary[pos]
        pos += 1
        if kind == 0x00:  # func: a type index
            functions += 1
            _, pos = _leb(binary, pos)
        elif kind == 0x01:  # table: reftype, limits
            pos = _limits(binary, pos + 1)
        elif kind == 0x02:  # memory: limits
            pos = _limits(binary, pos)
        elif kind == 0x03:  # global: valtype, mutability
            pos += 2
        else:  # a kind this reader does not know: stop counting, stay correct so far
            break
    return functions


def _limits(binary: bytes, pos: int) -> int:
    flags = binary[pos]
    _, pos = _leb(binary, pos + 1)
    if flags & 1:
        _, pos = _leb(binary, pos)
    return pos


def prologues(binary: bytes, imported: int) -> dict[int, int]:
    """Function index → bytes of its local declarations. wasmtime reports an epoch check
    at a function's entry at an offset inside them: a frame interrupted there had just
    been entered and had not run any of its own code yet."""
    span = _sections(binary).get(_CODE_SECTION)
    if span is None:
        return {}
    pos, _ = span
    count, pos = _leb(binary, pos)
    out: dict[int, int] = {}
    for i in range(count):
        size, pos = _leb(binary, pos)
        body_end = pos + size
        groups, cursor = _leb(binary, pos)
        for _ in range(groups):
            _, cursor = _leb(binary, cursor)
            kind = binary[cursor]
            cursor += 1
            if kind in (0x63, 0x64):  # (ref null? ht): a heap type follows
                _, cursor = _leb(binary, cursor)
        out[imported + i] = cursor - pos
        pos = body_end
    return out
