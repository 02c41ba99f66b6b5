"""``@sealed``: a dataclass that is frozen to the type checker and plain at run time.

A frozen dataclass sets each field through ``object.__setattr__`` so that assignment can
raise; for the objects made once per request (``Invocation``, ``Outcome``, ``Answer``,
``RouteMatch``) that is three times what making them costs otherwise (6.3 µs against
1.9 µs for ``Invocation``'s 14 fields, loaded). ``dataclass_transform(frozen_default=True)``
keeps them read-only where it is checked — mypy refuses an assignment to a field (the
suite runs mypy: tests/test_types.py) — and ``slots`` refuses a new attribute at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def sealed(cls: type[T]) -> type[T]:
    return dataclass(slots=True)(cls)
