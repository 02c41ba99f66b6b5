"""`flux check`: code in functions that bypasses ctx is found, at its line, with the ctx call
to use instead; clean code and the example app pass."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from flux.inspect._check import REASONS, check_paths, check_source

REPO = Path(__file__).resolve().parents[2]
UNREPLAYABLE = REPO / "tests" / "fixtures" / "apps" / "unreplayable"
SHOP = REPO / "examples" / "shop"
EXPECT = re.compile(r"#.*\bexpect: (\w+)")


def _expected(project: Path) -> set[tuple[str, int, str]]:
    """(file, line, rule) of every line marked ``# expect: RULE`` in the fixture."""
    marks = set()
    for path in sorted((project / "functions").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if match := EXPECT.search(line):
                marks.add((f"functions/{path.name}", number, match[1]))
    return marks


def test_each_forbidden_pattern_is_caught_at_its_line() -> None:
    expected = _expected(UNREPLAYABLE)
    assert {rule for _, _, rule in expected} == set(REASONS)  # every rule has a case
    result = check_paths([], cwd=UNREPLAYABLE)
    assert result.files_checked == 9
    assert {(f.file, f.line, f.rule) for f in result.findings} == expected
    assert result.exit_code == 1


def test_finding_names_the_resolved_call_and_the_ctx_door() -> None:
    result = check_paths([UNREPLAYABLE / "functions" / "clock.py"], cwd=UNREPLAYABLE)
    by_line = {f.line: f for f in result.findings}
    aliased = by_line[15]  # stamp = dt.now()
    assert (aliased.col, aliased.rule) == (13, "time")
    assert aliased.message.startswith("dt.now() (datetime.datetime.now) reads the clock")
    assert aliased.suggestion == "ctx.now()"
    assert by_line[16].suggestion == "ctx.now().date()"
    assert by_line[18].suggestion == "ctx.now().timestamp()"


def test_cli_prints_file_line_col_and_the_ctx_call(flux_cli) -> None:
    result = flux_cli(["check"], UNREPLAYABLE)
    assert result.returncode == 1, result.stderr
    assert "functions/randomness.py:13:12  random  r.random() (random.random)" in result.stdout
    assert "→ use ctx.random()" in result.stdout
    assert "functions/environment.py:14:11  env  environ (os.environ)" in result.stdout
    assert 'ctx.secrets.get("NAME")' in result.stdout
    assert "functions/databases.py:5:1  uncaptured  import redis: redis (a Redis client) " \
        "reaches outside through no recorded path" in result.stdout
    assert "→ use ctx.step(name, fn, *args)" in result.stdout
    assert "http_clients.py" not in result.stdout  # captured clients are no finding
    assert "32 findings in 9 files" in result.stdout
    assert result.stderr == ""


CLEAN = '''
"""Everything from outside through ctx; names that only look like the forbidden ones."""

import datetime
import random
import secrets
import time
import uuid

from flux import function


class Circuit:
    def open(self):
        return "open"


@function
async def tidy(ctx, input, time=None):
    now = ctx.now()
    rng = random.Random(ctx.random())
    key = ctx.secrets.get("API_KEY")
    answer = await ctx.http.get("https://api.example.com/x", timeout=5)
    rows = await ctx.db.fetchall("SELECT 1")
    stamp = datetime.datetime.fromisoformat("2024-01-01T00:00:00")
    named = uuid.uuid5(uuid.NAMESPACE_DNS, "example.com")
    same = secrets.compare_digest(key or "", "x")
    Circuit().open()
    with ctx.span("work"):
        local = time.localtime(0) if time else None
    return {"now": now, "r": rng.random(), "id": str(ctx.uuid()), "a": answer.json(),
            "rows": rows, "stamp": stamp, "named": named, "same": same, "local": local,
            "epoch": time.gmtime(0) if time else None}


def helper(random):
    return random.random()  # the parameter, not the module
'''


def test_clean_code_that_uses_ctx_passes(tmp_path, flux_cli) -> None:
    assert check_source(CLEAN) == []
    (tmp_path / "tidy.py").write_text(CLEAN)
    result = flux_cli(["check", "tidy.py"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 file checked" in result.stdout


def test_example_shop_passes(flux_cli) -> None:
    result = flux_cli(["check"], SHOP)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 files checked" in result.stdout


def test_a_project_path_means_its_functions(flux_cli) -> None:
    result = flux_cli(["check", "--json", str(UNREPLAYABLE)], REPO)
    document = json.loads(result.stdout)
    assert document["files_checked"] == 9
    assert {Path(f["file"]).parent.name for f in document["findings"]} == {"functions"}


def test_suppression_comment_accepts_a_line_or_named_rules() -> None:
    source = (
        "import os\n"
        "import time\n"
        "A = os.environ['A']  # flux: allow\n"
        "B = os.environ['B']  # flux: allow[env] (read once at import, on purpose)\n"
        "C = time.time()  # flux: allow[env]\n"
        "D = time.time()  # flux:allow[time,env]\n"
        "E = os.getenv(\n"
        "    'E')  # flux: allow\n"
        "F = '# flux: allow'; G = time.time()\n"
    )
    found = [(f.line, f.rule) for f in check_source(source)]
    assert found == [(5, "time"), (9, "time")]


def test_imports_resolve_through_scopes_and_aliases() -> None:
    source = (
        "from random import *\n"
        "from urllib import request as web\n"
        "import os.path\n"
        "try:\n"
        "    import requests\n"
        "except ImportError:\n"
        "    requests = None\n"
        "def f(ctx):\n"
        "    import datetime as d\n"
        "    return d.datetime.now(), shuffle([1]), web.urlopen('u'), requests.get('u')\n"
        "def g(d):\n"
        "    return d.datetime.now()  # a parameter: not the module\n"
        "class K:\n"
        "    os = None\n"
        "    def m(self):\n"
        "        return os.environ  # the module: class names are not seen in methods\n"
        "def h():\n"
        "    open = print\n"
        "    return open('x'), os.path.join('a', 'b')\n"
    )
    found = [(f.line, f.col, f.rule) for f in check_source(source)]
    # urlopen and requests.get are captured at run time: no finding
    assert found == [(10, 12, "time"), (10, 30, "random"), (16, 16, "env")]


def test_bad_path_is_one_sentence_and_exit_2(tmp_path, flux_cli) -> None:
    result = flux_cli(["check", "no/such/dir"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: no/such/dir does not exist"
    assert result.stdout == ""


def test_outside_a_project_without_path_is_exit_2(tmp_path, flux_cli) -> None:
    result = flux_cli(["check"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no flux.toml in ")
    assert "Traceback" not in result.stderr


def test_syntax_error_is_a_finding_with_its_line_and_exit_2(tmp_path, flux_cli) -> None:
    (tmp_path / "good.py").write_text("import time\nT = time.time()\n")
    (tmp_path / "broken.py").write_text("def f(ctx):\n    return (\n\n")
    result = flux_cli(["check", "."], tmp_path)
    assert result.returncode == 2
    assert "broken.py:2:12  syntax  not valid Python: '(' was never closed" in result.stdout
    assert "good.py:2:5  time" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    document = json.loads(flux_cli(["check", ".", "--json"], tmp_path).stdout)
    assert [(f["file"], f["line"], f["rule"]) for f in document["findings"]] == [
        ("broken.py", 2, "syntax"), ("good.py", 2, "time")]


def test_json_has_findings_and_files_checked(flux_cli) -> None:
    result = flux_cli(["check", "--json", "functions/ids.py"], UNREPLAYABLE)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert set(document) == {"findings", "files_checked", "followed"}
    assert document["files_checked"] == 1
    assert document["findings"][0] == {
        "file": "functions/ids.py", "line": 11, "col": 13, "rule": "uuid",
        "message": "uuid.uuid1() makes a UUID outside ctx: a replay would make another one",
        "suggestion": "ctx.uuid()", "fix": "ctx.uuid()"}
    assert json.loads(flux_cli(["check", "--json"], SHOP).stdout) == {
        "findings": [], "files_checked": 5, "followed": []}


def test_pre_commit_hook_runs_flux_check_on_functions(flux_cli) -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "flux-check")
    assert hook["entry"] == "flux check" and hook["language"] == "python"
    files = re.compile(hook["files"])
    assert files.search("functions/checkout.py")
    assert files.search("examples/shop/functions/checkout.py")
    assert not files.search("flux/inspect/_check.py")
    # pre-commit appends the staged file names to the entry
    staged = [str(p.relative_to(REPO)) for p in sorted((SHOP / "functions").glob("*.py"))]
    result = flux_cli([*hook["entry"].split()[1:], *staged], REPO)
    assert result.returncode == 0, result.stdout + result.stderr


# The syntax of a workflow command, as GitHub's Actions toolkit writes and the runner reads
# it: ::error k=v,k=v::message, with %, CR, LF escaped in the message and also : and , in
# the values of properties.
ANNOTATION = re.compile(r"^::(error|warning|notice)(?: (?P<props>[^:]*))?::(?P<message>.*)$")


def _unescape(text: str) -> str:
    for escaped, char in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","),
                          ("%25", "%")):
        text = text.replace(escaped, char)
    return text


def parse_annotations(output: str) -> list[dict[str, str]]:
    parsed = []
    for line in output.splitlines():
        match = ANNOTATION.match(line)
        assert match, f"not a GitHub workflow command: {line!r}"
        props = {}
        for pair in (match["props"] or "").split(","):
            key, _, value = pair.partition("=")
            assert key in ("file", "line", "endLine", "col", "endColumn", "title"), pair
            props[key] = _unescape(value)
        assert "%" not in match["message"].replace("%25", "").replace("%0A", "").replace(
            "%0D", "")
        parsed.append({"level": match[1], **props, "message": _unescape(match["message"])})
    return parsed


def test_github_format_is_one_annotation_per_finding(flux_cli) -> None:
    github = flux_cli(["check", "--format", "github"], UNREPLAYABLE)
    assert github.returncode == 1, github.stderr
    as_json = flux_cli(["check", "--format", "json"], UNREPLAYABLE)
    assert as_json.returncode == 1, as_json.stderr
    findings = json.loads(as_json.stdout)["findings"]
    annotations = parse_annotations(github.stdout)
    assert len(annotations) == len(findings) == 32
    for note, f in zip(annotations, findings, strict=True):
        assert note["level"] == "error"
        assert (note["file"], int(note["line"]), int(note["col"])) == (f["file"], f["line"],
                                                                      f["col"])
        assert note["title"] == f"flux check: {f['rule']}"
        assert note["message"] == f"{f['message']} → use {f['fix']}"


def test_github_annotations_escape_and_name_the_file_in_the_workspace(tmp_path,
                                                                       flux_cli) -> None:
    project = tmp_path / "services" / "api"
    (project / "functions").mkdir(parents=True)
    (project / "flux.toml").write_text('name = "api"\n')
    (project / "functions" / "odd,name%1.py").write_text(
        "import os\n\nBASE = os.environ['BASE']  # 100% needed: a, b\n")
    done = flux_cli(["check", "--format", "github"], project,
                    env={"GITHUB_WORKSPACE": str(tmp_path)})
    assert done.returncode == 1, done.stderr
    (note,) = parse_annotations(done.stdout)
    assert note["file"] == "services/api/functions/odd,name%1.py"
    assert (note["line"], note["title"]) == ("3", "flux check: env")
    assert note["message"].startswith("os.environ")


def test_json_format_lists_rule_file_line_message_and_fix(flux_cli) -> None:
    done = flux_cli(["check", "--format", "json", "functions/randomness.py"], UNREPLAYABLE)
    assert done.returncode == 1, done.stderr
    finding = json.loads(done.stdout)["findings"][0]
    assert {"rule", "file", "line", "message", "fix"} <= set(finding)
    assert (finding["rule"], finding["file"]) == ("random", "functions/randomness.py")
    assert isinstance(finding["line"], int) and finding["fix"].startswith("ctx.")
    clean = flux_cli(["check", "--format", "github"], SHOP)
    assert (clean.returncode, clean.stdout) == (0, "")
    wrong = flux_cli(["check", "--format", "xml"], SHOP)
    assert wrong.returncode != 0 and "--format takes human, github, json" in wrong.stderr


def _project(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "flux.toml").write_text('name = "p"\n')
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_uncaptured_libraries_are_named_through_the_project_imports(tmp_path, flux_cli) -> None:
    root = _project(tmp_path, {
        "functions/signup.py": (
            "import sqlalchemy\n"
            "from redis import Redis\n"
            "from lib.mail import welcome\n"
            "from flux import function\n\n"
            "@function\n"
            "def signup(ctx, input):\n"
            "    welcome(input['email'])\n"
            "    return {'ok': True}\n"),
        "lib/__init__.py": "",
        "lib/mail.py": (
            "import smtplib\n\n"
            "def welcome(to):\n"
            "    with smtplib.SMTP('mail.example.com') as smtp:\n"
            "        smtp.sendmail('shop@example.com', [to], 'hello')\n"),
    })
    result = check_paths([], cwd=root)
    where = {(f.file, f.line, f.rule) for f in result.findings}
    assert {("functions/signup.py", 1, "uncaptured"), ("functions/signup.py", 2, "uncaptured"),
            ("lib/mail.py", 1, "uncaptured"), ("lib/mail.py", 4, "socket")} <= where
    assert "lib/mail.py" in result.followed
    smtp = next(f for f in result.findings if f.file == "lib/mail.py" and f.line == 1)
    assert smtp.suggestion.startswith("ctx.step(name, fn, *args)")
    cli = flux_cli(["check", "--json"], root)
    assert cli.returncode == 1
    shown = {(f["file"], f["line"], f["rule"]) for f in json.loads(cli.stdout)["findings"]}
    assert shown == where


def test_a_project_calling_stripe_through_httpx_passes(tmp_path, flux_cli) -> None:
    root = _project(tmp_path, {
        "functions/pay.py": (
            "import httpx\n"
            "import stripe\n"
            "from payments import charge\n"
            "from flux import function\n\n"
            "@function\n"
            "def pay(ctx, input):\n"
            "    stripe.api_key = ctx.secrets.get('STRIPE_KEY')\n"
            "    httpx.post('https://hooks.example.com/paid', json={})\n"
            "    return charge(input['amount'])\n"),
        "functions/payments.py": (
            "import stripe\n\n"
            "def charge(amount):\n"
            "    return stripe.Charge.create(amount=amount, currency='usd').id\n"),
    })
    result = flux_cli(["check"], root)
    assert result.returncode == 0, result.stdout
    assert "2 files checked" in result.stdout
    assert "everything from outside goes through ctx" not in result.stdout
