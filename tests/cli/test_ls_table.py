"""How ``flux ls`` puts an execution's error in its one cell."""

from __future__ import annotations

from cli.inspect import error_cell


def test_an_error_is_named_by_its_type_so_a_bare_key_says_what_it_is() -> None:
    assert error_cell("KeyError", "'amount_cents'") == "KeyError: 'amount_cents'"
    assert error_cell("HTTPError", "402 Client Error\nmore") == "HTTPError: 402 Client Error"
    assert error_cell("IndexError", "") == "IndexError"


def test_a_ctx_error_and_a_message_naming_its_type_are_left_as_they_are() -> None:
    assert error_cell("FunctionError", "email must contain @") == "email must contain @"
    assert (
        error_cell("UniqueViolation", "UniqueViolation: duplicate key")
        == "UniqueViolation: duplicate key"
    )
    assert error_cell(None, None) == "" and error_cell(None, "boom") == "boom"
    assert error_cell("GatewayError", "no function is routed at /nope") == \
        "no function is routed at /nope"
