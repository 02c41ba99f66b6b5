"""What every command's text output shares (cli/_output.py)."""

from __future__ import annotations

from cli._output import shorten

INSERT = ("INSERT INTO orders (user_id, amount_cents, status) VALUES (%s, %s, 'pending') "
          "RETURNING id")


def test_shorten_cuts_at_a_word_with_an_ellipsis() -> None:
    assert shorten("db " + INSERT) == "db INSERT INTO orders (user_id, amount_cents, status)…"
    assert shorten(INSERT, 80) == \
        "INSERT INTO orders (user_id, amount_cents, status) VALUES (%s, %s, 'pending')…"
    assert shorten("short") == "short"
    assert len(shorten(INSERT)) <= 60


def test_shorten_cuts_a_value_without_words_where_it_must() -> None:
    digest = "f" * 100
    assert shorten(digest) == "f" * 59 + "…"
    assert shorten("id " + digest) == "id " + "f" * 56 + "…"
