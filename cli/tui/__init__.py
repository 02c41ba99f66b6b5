"""``flux trace debug ID|FILE``: load the execution through ``flux.replay._debug`` and open the
terminal UI. Textual is imported here, only when the debugger is launched."""

from __future__ import annotations


def run(target: str) -> None:
    """Open the debugger on an execution id prefix or a record file."""
    from flux._project import load
    from flux.replay._debug import diff_against, is_file_target, load_debug, replay_debug

    project = None if is_file_target(target) else load()  # a file needs no project
    data = load_debug(project, target)

    from cli.tui.app import DebugApp

    DebugApp(data, on_diff=lambda other: diff_against(project, data, other),
             on_replay=lambda: replay_debug(project, data)).run()


def debug(args: list[str]) -> None:
    """``flux trace debug`` with the words after ``debug``: exactly one id or file."""
    from flux._errors import ConfigError

    if len(args) != 1:
        raise ConfigError("flux trace debug takes one execution id or record file: "
                          "flux trace debug ID|FILE")
    run(args[0])
