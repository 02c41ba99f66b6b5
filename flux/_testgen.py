"""A compatibility shim: tests written by ``flux test generate`` before ``flux.testing``
existed do ``from flux._testgen import replay_recorded``. They live in users' repositories,
so the name stays here; new tests import ``flux.testing``, and nothing else should import
this module (tests/test_layout.py keeps the CLI off it)."""

from __future__ import annotations

from flux.replay._testrun import replay_recorded

__all__ = ["replay_recorded"]
