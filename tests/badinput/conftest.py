"""The bad-input suite reads a real ``flux serve`` too (tests/access/conftest.py)."""

from tests.access.conftest import login_role, served  # noqa: F401
