"""The replay commands: explain (a dry run), replay, and resume. Each parses, calls one
function in flux/ (through the local or remote source), and renders."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.markup import escape

from cli._output import err, out, print_json, shorten
from cli._source import source
from cli.inspect import JSON
from flux._ids import short
from flux._project import load


def explain(function: str = typer.Argument(None, help="Function to dry-run."),
            input: str = typer.Option(None, "--input", "-i", help="Its input, as JSON."),
            sql: str = typer.Option(None, "--sql", help="Explain one SQL statement instead."),
            as_json: bool = JSON) -> None:
    """A dry run in a rolled-back transaction: each statement's SQL, tables, plan, policies."""
    from flux._errors import ConfigError
    from flux.replay._explain import explain_function, explain_sql
    from flux.store._database import reader

    project = load()
    if (function is None) == (sql is None):
        raise ConfigError("give a function (with --input JSON) or --sql, not both")
    if sql is not None:
        with reader(project) as conn:
            result = explain_sql(conn, project, sql)
    else:
        from flux.store._database import resolve

        result = explain_function(project, resolve(project).conninfo, function, input or "{}")
    if as_json:
        print_json(result)
        return
    if result.get("function"):
        outcome = result["outcome"]
        colour = "green" if outcome["status"] == "ok" else "red"
        out.print(f"\n  [bold]Dry run[/]  {escape(result['function'])}  "
                  f"[{colour}]{outcome['http_status']}[/]  [dim](rolled back; outbound calls "
                  f"answered by stubs)[/]")
        if outcome.get("error"):
            out.print(f"  [red]{escape(str(outcome['error'].get('message')))}[/]")
    for i, st in enumerate(result["statements"], 1):
        where = f"  [dim]{escape(st['file'])}:{st['line']}[/]" if st.get("file") else ""
        out.print(f"\n  [bold]{i}. {st['verb'].upper()}[/]  [dim]{st['fingerprint']}[/]{where}")
        for line in st["sql"].splitlines():
            out.print(f"     {escape(line)}")
        out.print(f"     [dim]reads[/] {', '.join(st['reads']) or '—'}   "
                  f"[dim]writes[/] {', '.join(st['writes']) or '—'}")
        if st.get("violation"):
            out.print(f"     [red]✗ policy: {escape(st['violation'])} — not executed[/]")
        for policy in st["rls"]:
            name = policy["policy"] or "(RLS on, no policy: nothing visible)"
            out.print(f"     [magenta]RLS[/] {escape(policy['table'])}: {escape(name)} "
                      f"{escape(policy['command'] or '')} {escape(policy['using'] or '')}")
        for line in st["plan"]:
            out.print(f"     [cyan]{escape(line)}[/]")
        if st.get("plan_error"):
            out.print(f"     [yellow]no plan: {escape(st['plan_error'])}[/]")
    for call in result.get("http", []):
        out.print(f"\n  [bold]HTTP[/] {call['method']} {escape(call['url'])} [dim]not sent; "
                  f"answered {call['answered']}{' by a stub' if call['stub'] else ''}[/]")
    out.print("")


def replay(target: str = typer.Argument(..., help="Execution id (prefix) or a record file."),
           expect: str = typer.Option(None, "--expect", help="same: pass only if the "
                                      "replay reproduces the original exactly."),
           db: str = typer.Option("tape", "--db", help="tape (default) or live (rolled "
                                  "back)."),
           config: str = typer.Option("tape", "--config", help="tape (default: the ctx.config "
                                      "values the execution read) or local (today's)."),
           as_json: bool = JSON) -> None:
    """Run today's code on a recorded execution with the same IO; nothing is sent or kept."""
    from flux._errors import ConfigError
    from flux.replay._replay import replay_command

    if expect not in (None, "same"):
        raise ConfigError("--expect takes only: same")
    result = replay_command(load(), target, db_mode=db, expect_same=expect == "same",
                            config=config)
    if as_json:
        print_json(result)
    else:
        _render_replay(result)
    raise typer.Exit(0 if result["passed"] else 1)


def _render_replay(r: dict[str, Any]) -> None:
    def outcome(facts: dict[str, Any], http: Any) -> str:
        if facts["status"] == "ok":
            return f"[green]ok {http}[/]"
        error = facts["error"] or {}
        return f"[red]{http} {escape(str(error.get('type')))}: " \
               f"{escape(shorten(str(error.get('message'))))}[/]"

    out.print(f"\n  [bold]Replay[/]  {short(r['request_id'])}  {escape(r['function'] or '')}"
              f"  [dim](db from {r['db']}, nothing sent, nothing kept)[/]")
    out.print(f"  original   {outcome(r['original'], r['http_status']['original'])}")
    out.print(f"  replayed   {outcome(r['replayed'], r['http_status']['replayed'])}")
    d = r["divergence"]
    if d:
        expected = (d["expected"] or {}).get("key") or "nothing (the tape had ended)"
        actual = (d["actual"] or {}).get("call") or "nothing (the call was not made)"
        out.print(f"\n  [yellow]DIVERGED[/] at {escape(str(d['file']))}:{d['line']} — "
                  f"{escape(d['reason'])}")
        out.print(f"    expected  {escape(shorten(str(expected)))}")
        out.print(f"    actual    {escape(shorten(str(actual)))}")
    for diff in r.get("config", {}).get("differs", []):
        used = "today's" if r["config"]["from"] == "local" else "the recorded value"
        out.print(f"  [dim]config[/] {escape(diff['key'])}: recorded "
                  f"{escape(json.dumps(diff['recorded']))}, today "
                  f"{escape(json.dumps(diff['today']))} [dim](replayed with {used})[/]")
    body = r.get("request_body") or {}
    if not body.get("exact", True) and body.get("read"):
        out.print(f"  [yellow]request body[/] the handler read the raw body, but "
                  f"{escape(str(body.get('reason')))}: it got the recorded body instead, so "
                  "a signature over the bytes cannot match")
    for call in r["beyond_tape"]:
        out.print(f"  [dim]beyond the tape:[/] {escape(call['call'])} at "
                  f"{escape(str(call['file']))}:{call['line']} — {escape(call['handled'])}")
    verdict = "[green]PASSED[/]" if r["passed"] else "[red]STILL FAILING[/]"
    out.print(f"\n  {verdict}\n")


def resume(request_id: str = typer.Argument(..., help="Execution id or a unique prefix."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan; run nothing."),
           strict: bool = typer.Option(False, "--strict", help="Stop if a read now returns "
                                       "something else than when it ran."),
           as_json: bool = JSON) -> None:
    """Finish a failed execution with today's code, never repeating its outside effects."""
    from flux._errors import ResumeRefused
    from flux.runtime._callkey import endpoint_of  # an HTTP call as people read it

    try:
        result = source().resume(request_id, dry_run=dry_run, strict=strict)
    except ResumeRefused as refused:
        if as_json:  # a refusal is an error like any other: status, and the sentence
            print_json({**(refused.details or {}), "status": "error", "refused": True,
                        "error": refused.message})
        elif isinstance(d := refused.details.get("divergence"), dict):
            made = (f"got {escape(str(d['actual'].get('call')))}" if d.get("actual")
                    else "which today's code never made")
            out.print(f"  [yellow]diverged[/] at {escape(str(d['file']))}:{d['line']}: "
                      f"expected {escape(endpoint_of(str((d['expected'] or {}).get('key'))))}"
                      f", {made}")
        raise
    if as_json:
        print_json(result)
        if dry_run and result.get("refusal"):  # exits as the refusal it predicts
            raise typer.Exit(ResumeRefused.exit_code)
        if not dry_run and result["status"] != "ok":  # as the rich output's exit code
            raise typer.Exit(1)
        return
    out.print(f"\n  [bold]Resume[/]  {short(result['resumed_from'])}"
              + ("  [dim](dry run: nothing executed)[/]" if dry_run else ""))
    marks = {"tape": "[cyan]served from tape[/]", "live": "[yellow]runs live[/]",
             "db": "[magenta]re-executed in DB[/]"}
    for step in result["plan"]:
        where = f"  [dim]{escape(str(step['file']))}:{step['line']}[/]" if step["file"] else ""
        flag = "  [red]← failed here[/]" if step["failed"] else ""
        out.print(f"    {escape(shorten(step['call'])):<58} {marks[step['mode']]}{where}{flag}")
    for drift in result["drift"]:
        out.print(f"  [yellow]state drift[/]: {escape(shorten(drift['call'], 80))} at "
                  f"{escape(str(drift['file']))}:{drift['line']} returns something else now")
    if dry_run:
        rehearsal = result.get("rehearsal") or {}
        if rehearsal:
            out.print(f"  rehearsal with today's code: {escape(str(rehearsal['status']))} "
                      f"{rehearsal.get('http_status') or ''}")
        out.print("")
        if result.get("refusal"):  # one sentence, and the exit code of the real refusal
            err.print(f"[bold red]error:[/] a resume would be refused: "
                      f"{escape(result['refusal'])}")
            raise typer.Exit(ResumeRefused.exit_code)
        return
    for sent in result["sent"]:
        out.print(f"  sent {sent['method']} {escape(sent['url'])}  [dim]Idempotency-Key "
                  f"{escape(str(sent['idempotency_key']))}[/]")
    colour = "green" if result["status"] == "ok" else "red"
    out.print(f"\n  [{colour}]{result['status']}[/] → new execution "
              f"{short(result['request_id'])} (resumed_from {short(result['resumed_from'])})\n")
    if result["status"] != "ok":
        raise typer.Exit(1)
