"""A step's recorded exception comes back as itself: its class when it can be imported and
built with the recorded arguments, else StepFailed naming it."""

from __future__ import annotations

import json

from flux._errors import StepFailed
from flux.runtime._step import rebuild


class Rejected(Exception):
    def __init__(self, to: str, reason: str) -> None:
        super().__init__(to, reason)
        self.to = to


class Picky(Exception):
    def __init__(self, *, code: int) -> None:  # cannot be rebuilt from positional args
        super().__init__(f"code {code}")


def test_builtin_and_user_classes_are_rebuilt_with_their_arguments() -> None:
    error = rebuild({"type": "builtins.KeyError", "message": "'id'", "args": ["id"]})
    assert type(error) is KeyError and error.args == ("id",)
    error = rebuild({"type": f"{__name__}.Rejected", "message": "x",
                     "args": ["a@b.example", "550"]})
    assert isinstance(error, Rejected) and error.to == "a@b.example"
    assert error.args == ("a@b.example", "550")


def test_a_class_that_cannot_be_built_keeps_its_class_and_message() -> None:
    error = rebuild({"type": f"{__name__}.Picky", "message": "code 7", "args": ["code 7"]})
    assert type(error) is Picky and str(error) == "code 7"


def test_an_unknown_class_is_step_failed_naming_it() -> None:
    error = rebuild(json.loads('{"type": "gone.module.Boom", "message": "boom"}'))
    assert isinstance(error, StepFailed) and error.type == "gone.module.Boom"
    assert "gone.module.Boom: boom" in str(error)
