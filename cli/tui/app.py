"""The ``flux trace debug`` app: the span tree on the left, the selected span's detail on
the right, a timeline strip, and keys to step, search, diff and replay.

Everything it shows comes from :class:`flux.replay._debug.DebugData`; diff and replay are
callables handed in by the CLI, run in worker threads so the UI stays responsive.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Input, Static, Tree
from textual.widgets.tree import TreeNode

from flux._ids import short
from flux.replay._debug import DebugData

THEME = "ansi_dark"


def _json(value: Any) -> Syntax:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)
    return Syntax(text, "json", theme=THEME, word_wrap=True, background_color="default")


def _show(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _latency(span: dict[str, Any]) -> str:
    ms = span.get("duration_ms")
    return "—" if ms is None else f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def span_label(span: dict[str, Any], own_error: bool) -> Text:
    """A tree row: the span's name, its latency, and ✗ with its code if it failed itself."""
    label = Text()
    if own_error:
        label.append("✗ ", style="bold red")
    elif span.get("status") == "error":
        label.append("✗ ", style="red")
    label.append(span.get("name") or "?")
    label.append(f"  {_latency(span)}", style="dim")
    if own_error:
        error = span.get("error") or {}
        code = error.get("status") or error.get("sqlstate") or error.get("type") or "error"
        label.append(f"  {code}", style="bold red")
    return label


def render_detail(facts: dict[str, Any]) -> RenderableType:
    """The right pane for one span: what it received and returned, SQL, HTTP, mutations,
    log lines, file:line."""
    parts: list[RenderableType] = []
    colour = "red" if facts["status"] == "error" else "green"
    head = Text.from_markup(
        f"[bold]{escape(facts['name'] or '?')}[/]  [dim]{facts['kind']} · {facts['id']}[/]  "
        f"[{colour}]{facts['status']}[/]  {_latency(facts)}")
    parts.append(head)
    if facts["where"]:
        parts.append(Text.from_markup(f"[dim]at[/] [cyan]{escape(facts['where'])}[/]"))
    if facts["error"]:
        error = facts["error"]
        parts.append(Text.from_markup(
            f"[bold red]✗ {escape(str(error.get('type') or 'error'))}[/]: "
            f"{escape(str(error.get('message') or ''))}"))

    def section(title: str) -> None:
        parts.append(Text(""))
        parts.append(Text(title, style="bold underline"))

    if facts["input"] is not None or facts["output"] is not None:
        section("Input")
        parts.append(_json(facts["input"]))
        section("Output")
        parts.append(_json(facts["output"]))
    sql = facts["sql"]
    if sql:
        section("SQL")
        if sql["text"]:
            parts.append(Syntax(sql["text"], "sql", theme=THEME, word_wrap=True,
                                background_color="default"))
        parts.append(Text.from_markup(f"[dim]params[/] {escape(_show(sql['params'], 200))}  "
                                      f"[dim]rowcount[/] {sql['rowcount']}"))
        if sql["rows"]:
            columns = sql["columns"] or list(sql["rows"][0])
            grid = Table(box=None, header_style="bold", pad_edge=False)
            for column in columns:
                grid.add_column(escape(str(column)), overflow="ellipsis")
            for row in sql["rows"][:50]:
                values = row.values() if isinstance(row, dict) else row
                grid.add_row(*(escape(_show(v, 30)) for v in values))
            parts.append(grid)
            if len(sql["rows"]) > 50:
                parts.append(Text(f"… {len(sql['rows']) - 50} more rows", style="dim"))
    http = facts["http"]
    if http:
        section("HTTP request")
        parts.append(Text.from_markup(f"[bold]{escape(str(http['method']))}[/] "
                                      f"{escape(str(http['url']))}"))
        for name, value in sorted(http["headers"].items()):
            parts.append(Text.from_markup(f"[dim]{escape(name)}:[/] {escape(str(value))}"))
        if http["body"] is not None:
            parts.append(_json(http["body"]))
        response = http["response"]
        section("HTTP response")
        status = response.get("status")
        ok = isinstance(status, int) and 200 <= status < 300
        parts.append(Text.from_markup(f"[bold {'green' if ok else 'red'}]{status}[/]"))
        for name, value in sorted(response["headers"].items()):
            parts.append(Text.from_markup(f"[dim]{escape(name)}:[/] {escape(str(value))}"))
        if response["body"] is not None:
            parts.append(_json(response["body"]))
    if facts["mutations"]:
        section("Mutations")
        for m in facts["mutations"]:
            key = ",".join(f"{k}={v}" for k, v in m["pk"].items())
            flag = "  [red](rolled back)[/]" if m["rolled_back"] else ""
            parts.append(Text.from_markup(f"[bold]{m['op']}[/] {escape(m['table'])} "
                                          f"{escape(key)}{flag}"))
            grid = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
            grid.add_column("column", style="cyan", no_wrap=True)
            grid.add_column("old → new", overflow="fold")
            for column, (old, new) in m["changes"].items():
                grid.add_row(f"  {escape(column)}",
                             f"{escape(_show(old, 30))} → {escape(_show(new, 30))}")
            parts.append(grid)
    if facts["logs"]:
        section("Logs")
        for line in facts["logs"]:
            fields = " ".join(f"{k}={_show(v, 30)}" for k, v in (line.get("fields") or {}).items())
            parts.append(Text.from_markup(
                f"[dim]{line.get('t_ms', 0):>8.1f}ms[/] {escape(str(line.get('level', '')))} "
                f"{escape(str(line.get('message', '')))} [dim]{escape(fields)}[/]"))
    return Group(*parts)


def render_diff(result: dict[str, Any]) -> RenderableType:
    """The summary of ``flux trace diff`` in the diff screen."""
    s = result["summary"]
    delta = s.get("latency_delta_ms")
    parts: list[RenderableType] = [
        Text.from_markup(f"[bold]Trace diff[/]  A {short(result['a_id'])}  →  "
                         f"B {short(result['b_id'])}"),
        Text(f"{s['same']} same · {s['changed']} changed · {s['added']} added · "
             f"{s['removed']} removed" + (f" · latency {delta:+.0f}ms" if delta is not None
                                          else ""), style="dim"),
        Text(""),
    ]
    marks = {"same": " ", "changed": "[yellow]~[/]", "added": "[green]+[/]",
             "removed": "[red]-[/]"}
    for change in result["spans"]:
        span = change["b"] or change["a"] or {}
        parts.append(Text.from_markup(f"{marks[change['status']]} "
                                      f"{escape(span.get('name', '?'))}"))
        for name, (old, new) in list(change["changes"].items())[:6]:
            parts.append(Text.from_markup(f"    [dim]{escape(name)}:[/] "
                                          f"{escape(_show(old))} → {escape(_show(new))}"))
    for title in ("input", "output", "error"):
        if result.get(title):
            parts.append(Text(""))
            parts.append(Text(title, style="bold"))
            for name, (old, new) in list(result[title].items())[:10]:
                parts.append(Text(f"  {name}: {_show(old)} → {_show(new)}"))
    mutations = result.get("mutations") or {}
    if any(mutations.values()):
        parts.append(Text(""))
        parts.append(Text("mutations", style="bold"))
        for kind, mark in (("added", "+"), ("removed", "-"), ("changed", "~")):
            for key in mutations.get(kind) or []:
                parts.append(Text(f"  {mark} {key}"))
    if s.get("identical"):
        parts.append(Text("the two executions did the same things", style="green"))
    return Group(*parts)


class Timeline(Widget):
    """One line: the whole execution as a bar, the selected span's share of it solid."""

    DEFAULT_CSS = """
    Timeline { height: 1; }
    """

    span: reactive[dict[str, Any] | None] = reactive(None)

    def __init__(self, total_ms: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.total_ms = total_ms or 1.0

    def render(self) -> Text:
        span = self.span or {}
        start = span.get("start_ms") or 0.0
        duration = span.get("duration_ms") or 0.0
        label = f" {start:.1f}+{duration:.1f} of {self.total_ms:.1f}ms"
        width = max(10, self.size.width - len(label) - 1)
        left = min(width - 1, int(start / self.total_ms * width))
        length = max(1, min(width - left, round(duration / self.total_ms * width)))
        text = Text("▕", style="dim")
        text.append("─" * left, style="dim")
        text.append("█" * length, style="red" if span.get("status") == "error" else "cyan")
        text.append("─" * (width - left - length), style="dim")
        text.append(label, style="dim")
        return text


class DiffScreen(ModalScreen[None]):
    """The diff of this execution against another; Escape or q closes it."""

    DEFAULT_CSS = """
    DiffScreen { align: center middle; }
    DiffScreen > VerticalScroll {
        width: 90%; height: 90%; border: round $accent; background: $surface;
        padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss", "Close"),
    ]

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__()
        self.result = result

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(render_diff(self.result), id="diff")


class DebugApp(App[None]):
    """Step through one execution span by span."""

    TITLE = "flux trace debug"
    DEFAULT_CSS = """
    #title { height: 1; background: $boost; padding: 0 1; }
    #main { height: 1fr; }
    #spans { width: 40%; min-width: 24; max-width: 60; border-right: solid $primary; }
    #detail { width: 1fr; padding: 0 1; }
    #timeline { height: 1; padding: 0 1; }
    #status { height: auto; max-height: 3; padding: 0 1; }
    #prompt { display: none; dock: bottom; }
    #prompt.open { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "step(1)", "Next"),
        Binding("p", "step(-1)", "Prev"),
        Binding("e", "first_error", "Error"),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("d", "diff", "Diff"),
        Binding("r", "replay", "Replay"),
        Binding("q", "quit", "Quit"),
        Binding("escape", "close_prompt", show=False),
    ]

    current: reactive[int] = reactive(0, init=False)

    def watch_current(self, index: int) -> None:
        _, span, _ = self.data.rows[index]
        node = self._span_nodes[index]
        tree = self.query_one("#spans", Tree)
        if tree.cursor_node is not node:
            tree.move_cursor(node)
        self.query_one("#span-detail", Static).update(render_detail(self.data.detail(span)))
        self.query_one("#detail", VerticalScroll).scroll_home(animate=False)
        self.query_one(Timeline).span = span

    class ReplayFinished(Message):
        """A replay ended: its result, or the sentence saying why it could not run."""

        def __init__(self, result: dict[str, Any] | None, error: str | None) -> None:
            super().__init__()
            self.result = result
            self.error = error

    class DiffFinished(Message):
        """A diff against another execution is ready (or failed)."""

        def __init__(self, result: dict[str, Any] | None, error: str | None) -> None:
            super().__init__()
            self.result = result
            self.error = error

    def __init__(self, data: DebugData, *,
                 on_diff: Callable[[str], dict[str, Any]] | None = None,
                 on_replay: Callable[[], dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.data = data
        self.on_diff = on_diff
        self.on_replay = on_replay
        self._span_nodes: list[TreeNode[int]] = []
        self._prompt_mode = "search"
        self._last_search: str | None = None

    def compose(self) -> ComposeResult:
        r = self.data.record
        colour = "green" if r.get("status") == "ok" else "red"
        duration = r.get("duration_ms")
        yield Static(Text.from_markup(
            f"[bold]{escape(r.get('function') or r.get('kind') or '?')}[/]  "
            f"{escape(str(r.get('method') or r.get('kind') or ''))} /"
            f"{escape(r.get('route') or '')}  [{colour}]{r.get('http_status')}[/]  "
            + (f"{duration:.1f}ms  " if duration is not None else "")
            + f"[dim]{short(r['request_id'])} · {len(self.data.rows)} spans[/]"), id="title")
        with Horizontal(id="main"):
            tree: Tree[int] = Tree("execution", id="spans")
            tree.show_root = False
            tree.auto_expand = False
            tree.guide_depth = 2
            yield tree
            with VerticalScroll(id="detail"):
                yield Static(id="span-detail")
        yield Timeline(self.data.total_ms, id="timeline")
        yield Static(id="status")
        yield Input(id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        tree = self.query_one("#spans", Tree)
        parents: dict[Any, TreeNode[int]] = {}
        for index, (_, span, _) in enumerate(self.data.rows):
            parent = parents.get(span.get("parent_id")) or tree.root
            label = span_label(span, span.get("id") in self.data.culprits)
            node = parent.add(label, data=index, expand=True)
            parents[span.get("id")] = node
            self._span_nodes.append(node)
        for node in self._span_nodes:
            if not node.children:
                node.allow_expand = False
        tree.root.expand()
        tree.focus()
        if self._span_nodes:
            self.current = 0
            self.watch_current(0)

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[int]) -> None:
        # Moving the cursor ourselves posts highlights that may arrive after the next
        # step: only the node under the cursor now counts.
        if event.node is not event.control.cursor_node or event.node.data is None:
            return
        if event.node.data != self.current:
            self.current = event.node.data

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if self._prompt_mode == "search":
            after = -1 if text != self._last_search else self.current
            self._last_search = text
            found = self.data.search(text, after)
            if found is None:
                self._say(f"[yellow]no span matches {escape(text)!r}[/]")
            else:
                self.current = found
                self._say(f"[dim]{found + 1}/{len(self.data.rows)} · Enter: next match · "
                          f"Esc: close[/]")
            return
        self.action_close_prompt()
        if not text:
            return
        if self.on_diff is None:
            self._say("[yellow]diff is not available here[/]")
            return
        self._say(f"[dim]diffing against {escape(text)}…[/]")
        self._run_diff(text)

    def on_debug_app_diff_finished(self, message: DiffFinished) -> None:
        if message.result is None:
            self._say(f"[red]diff failed: {escape(message.error or '?')}[/]")
            return
        self._say("[dim]diff ready · Esc closes it[/]")
        self.push_screen(DiffScreen(message.result))

    def on_debug_app_replay_finished(self, message: ReplayFinished) -> None:
        result = message.result
        if result is None:
            self._say(f"[red]replay failed: {escape(message.error or '?')}[/]")
            return
        replayed = result.get("replayed") or {}
        divergence = result.get("divergence")
        if result.get("passed"):
            self._say(f"[green]✓ replay matches[/]: {replayed.get('status')} · "
                      f"HTTP {(result.get('http_status') or {}).get('replayed')}")
        else:
            why = (divergence or {}).get("message") or (divergence or {}).get("reason") or ""
            error = (replayed.get("error") or {}).get("message") or ""
            self._say(f"[red]✗ replay differs[/]: {replayed.get('status')} "
                      f"{escape(str(error))} {escape(str(why))}")

    def action_step(self, delta: int) -> None:
        if self._span_nodes:
            self.current = max(0, min(len(self._span_nodes) - 1, self.current + delta))

    def action_first_error(self) -> None:
        index = self.data.first_error()
        if index is None:
            self._say("[green]no span failed[/]")
        else:
            self.current = index

    def action_search(self) -> None:
        self._open_prompt("search", "search spans by name (Enter: next match, Esc: close)")

    def action_diff(self) -> None:
        self._open_prompt("diff", "diff against: execution id or record file (Enter)")

    def action_replay(self) -> None:
        if self.on_replay is None:
            self._say("[yellow]replay is not available here[/]")
            return
        self._say("[dim]replaying against today's code…[/]")
        self._run_replay()

    def action_close_prompt(self) -> None:
        prompt = self.query_one("#prompt", Input)
        prompt.remove_class("open")
        self.query_one("#spans", Tree).focus()

    @work(thread=True, exclusive=True, group="replay")
    def _run_replay(self) -> None:
        assert self.on_replay is not None
        try:
            self.post_message(self.ReplayFinished(self.on_replay(), None))
        except Exception as exc:  # shown in the status line, never a crash of the UI
            self.post_message(self.ReplayFinished(None, str(exc)))

    @work(thread=True, exclusive=True, group="diff")
    def _run_diff(self, other: str) -> None:
        assert self.on_diff is not None
        try:
            self.post_message(self.DiffFinished(self.on_diff(other), None))
        except Exception as exc:
            self.post_message(self.DiffFinished(None, str(exc)))

    def detail_text(self, width: int = 100) -> str:
        """The detail pane as plain text (what a reader of the screen would see)."""
        from rich.console import Console

        console = Console(width=width, record=True, file=io.StringIO())
        console.print(self.query_one("#span-detail", Static).content)
        return console.export_text()

    def _open_prompt(self, mode: str, placeholder: str) -> None:
        self._prompt_mode = mode
        self._last_search = None
        prompt = self.query_one("#prompt", Input)
        prompt.value = ""
        prompt.placeholder = placeholder
        prompt.add_class("open")
        prompt.focus()

    def _say(self, markup: str) -> None:
        self.query_one("#status", Static).update(Text.from_markup(markup))
