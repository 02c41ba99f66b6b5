"""The shape of JSON bodies, and how a dependency's answer changed shape.

``flux why`` calls an exception after a 2xx answer a *payload shape change* when that answer
lacks or retypes fields the same dependency's earlier successful answers had. Pure logic.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

# A field is "expected" if it was in at least this share of the earlier bodies. Not all of
# them: one odd answer among many (an earlier incident, a sparse object) must not hide the
# field for good. Not a bare majority: a field absent from more than a fifth of the answers
# is optional by the provider's own behaviour, and its absence now is no change of shape.
EXPECTED_SHARE = 0.8
USUAL_TYPE_SHARE = 0.2  # a type rarer than this among a field's earlier values is an outlier
_MARKER = re.compile(r"\[redacted hmac-sha256:[0-9a-f]{16}\]")


def shape_of(body: Any) -> dict[str, str]:
    """The flattened JSON shape of ``body``: ``{"id": "str", "card": "object",
    "card.brand": "str", "items": "array", "items[]": "object", "items[].sku": "str"}``.

    Types are null, bool, int, float, str, object, array, and redacted (a value the
    recorder fingerprinted); elements of mixed types give ``"int|str"``. A scalar body is
    ``{"": type}``."""
    found: dict[str, set[str]] = {}
    _walk(body, "", found, 0)
    return {path: "|".join(sorted(types)) for path, types in found.items()}


def shape_change(earlier: Sequence[Any], now: Any) -> dict[str, Any] | None:
    """How ``now`` differs in shape from the ``earlier`` bodies of the same dependency:
    ``{"missing": [...], "retyped": {field: [old, new]}, "added": [...]}``, or None when
    nothing expected is missing or retyped (new fields alone break no reader).

    Expected fields are those in at least ``EXPECTED_SHARE`` of the earlier bodies; int and
    float are one number; nothing is reported below a missing, retyped, empty or redacted
    field. Truncated bodies (too large to record) are not compared."""
    bodies = [b for b in earlier if not _truncated(b)]
    if not bodies or _truncated(now):
        return None
    seen: Counter[str] = Counter()
    types: dict[str, Counter[str]] = {}
    for shape in map(shape_of, bodies):
        for path, kinds in shape.items():
            seen[path] += 1
            types.setdefault(path, Counter()).update(kinds.split("|"))
    need = math.ceil(EXPECTED_SHARE * len(bodies))
    current = shape_of(now)
    blind = [p for p, t in current.items()
             if t == "redacted" or (t == "array" and f"{p}[]" not in current)]
    missing: list[str] = []
    retyped: dict[str, list[str]] = {}
    for path in sorted(p for p, n in seen.items() if n >= need):  # parents before children
        if _under(path, [*missing, *retyped, *blind]):
            continue
        if path not in current:
            missing.append(path)
            continue
        floor = math.ceil(USUAL_TYPE_SHARE * seen[path])
        usual = {t for t, n in types[path].items() if n >= floor} or set(types[path])
        now_kin, usual_kin = ({_kin(t) for t in ts} for ts in (current[path].split("|"), usual))
        if "redacted" not in usual and not now_kin <= usual_kin:
            retyped[path] = ["|".join(sorted(usual)), current[path]]
    if not missing and not retyped:
        return None
    added: list[str] = []
    for path in sorted(p for p in current if p not in seen):
        if not _under(path, added):
            added.append(path)
    return {"missing": missing, "retyped": retyped, "added": added}


def _walk(value: Any, path: str, found: dict[str, set[str]], depth: int) -> None:
    kind = _type_name(value)
    if path or kind not in ("object", "array"):
        found.setdefault(path, set()).add(kind)
    if depth > 32:
        return
    if isinstance(value, Mapping):
        for key, child in value.items():
            _walk(child, f"{path}.{key}" if path else str(key), found, depth + 1)
    elif isinstance(value, list | tuple):
        for child in value[:100]:  # enough to see an element's shape; bodies can be long
            _walk(child, f"{path}[]", found, depth + 1)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "redacted" if _MARKER.fullmatch(value) else "str"
    if isinstance(value, Mapping):
        return "object"
    kinds = ((bool, "bool"), (int, "int"), (float, "float"), (list | tuple, "array"))
    return next((n for t, n in kinds if isinstance(value, t)), type(value).__name__)


def _kin(kind: str) -> str:
    return "number" if kind in ("int", "float") else kind


def _under(path: str, parents: Sequence[str]) -> bool:
    return any(path.startswith((f"{p}.", f"{p}[]")) for p in parents if p)


def leaf(path: str) -> str:
    return path.replace("[]", "").rsplit(".", 1)[-1]


def _truncated(body: Any) -> bool:
    return isinstance(body, Mapping) and body.get("_flux_truncated") is True
