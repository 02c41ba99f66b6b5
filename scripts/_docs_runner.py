"""Runs ``flux`` commands for scripts/docs.py, each in a process of its own, fast.

Started once with the environment the commands should see, it imports the CLI and the
modules its commands import lazily, then reads one JSON request per line on stdin —
``{"argv": [...], "cwd": "...", "output": "/path"}`` — forks, and in the child runs
``cli.main.main()`` with that argv in that directory, stdout and stderr both written to
``output`` in the order they come, as a terminal would show them. It answers
``{"code": N}``, the child's exit code. The child is the command as a user runs it — the
same entry point, its own process, exit code and signals — minus the half second of imports
every ``python -m cli`` pays, about 45 times per docs run.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

PRELOAD = ("cli.main", "cli.tui", "flux.inspect._why", "flux.inspect._ls", "flux.inspect._trace",
           "flux.inspect._state", "flux.store._lookup", "flux.inspect._compare",
           "flux.replay._replay", "flux.replay._resume", "flux.replay._incident",
           "flux.replay._explain", "flux.server._db", "flux.jobs._queue", "flux.store._portable",
           "flux.replay._testgen", "flux.inspect._check", "flux.capture._consumer",
           "flux.capture._mode")


def run(argv: list[str], cwd: str, output: str) -> int:
    pid = os.fork()
    if pid == 0:  # the command
        code = 1
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            os.chdir(cwd)
            sys.argv = ["flux", *argv]
            from cli.main import main

            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None
                                                                  else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def serve() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    for line in sys.stdin:
        request = json.loads(line)
        code = run(request["argv"], request["cwd"], request["output"])
        sys.stdout.write(json.dumps({"code": code}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
