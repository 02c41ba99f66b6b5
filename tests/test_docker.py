"""docker/: no Docker engine runs here, so the Dockerfile and the compose file are parsed and
everything they point at — paths, commands, routes, environment variables — is checked to
exist."""

from __future__ import annotations

import glob
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            keyword, _, rest = whole.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (global ARGs before the first FROM dropped)."""
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in steps:
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], text)


def exec_form(rest: str) -> list[str]:
    """The JSON array of an exec-form CMD / ENTRYPOINT (shell form is not used here)."""
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((DOCKER / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_dockerfile_is_multi_stage_and_builds_a_wheel(dockerfile) -> None:
    built = stages(dockerfile)
    assert len(built) >= 2
    assert any(k == "RUN" and "python -m build --wheel" in r for k, r in built[0])
    final = built[-1]
    assert any(k == "COPY" and r.startswith("--from=builder") for k, r in final)
    assert any(k == "RUN" and "pip install" in r and ".whl" in r for k, r in final)
    assert final[0][1].endswith("-slim"), final[0]


def test_every_copied_path_exists(dockerfile) -> None:
    args: dict[str, str] = {}
    copied = 0
    for keyword, rest in dockerfile:
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        if keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(rest)
        if any(w.startswith("--from=") for w in words):
            continue  # from another stage, not from the build context
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            path = expand(source, args)
            assert glob.glob(str(REPO / path)), f"COPY {source}: {path} is not in the repo"
            copied += 1
    assert copied >= 5


def test_the_image_runs_as_a_user_who_is_not_root(dockerfile) -> None:
    final = stages(dockerfile)[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(rest for keyword, rest in final if keyword == "RUN")
    assert re.search(rf"useradd\b.*\b{re.escape(user)}\b", created)
    # the user comes before the command
    keywords = [keyword for keyword, _ in final]
    assert keywords.index("USER") < keywords.index("CMD")


def test_the_command_is_a_real_flux_command(dockerfile, flux_cli) -> None:
    final = stages(dockerfile)[-1]
    entrypoint = exec_form(next(r for k, r in final if k == "ENTRYPOINT"))
    cmd = exec_form(next(r for k, r in final if k == "CMD"))
    assert entrypoint == ["flux"]
    assert cmd[0] == "serve"
    result = flux_cli([cmd[0], "--help"], REPO)
    assert result.returncode == 0, result.stderr
    for option in (word for word in cmd[1:] if word.startswith("--")):
        assert option in result.stdout, f"flux serve has no {option}"
    port = cmd[cmd.index("--port") + 1]
    assert ("EXPOSE", port) in final


def test_the_health_check_asks_the_gateways_health_route(dockerfile) -> None:
    final = stages(dockerfile)[-1]
    health = next(r for k, r in final if k == "HEALTHCHECK")
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", health)
    assert url is not None, health
    cmd = exec_form(next(r for k, r in final if k == "CMD"))
    assert url[1] == cmd[cmd.index("--port") + 1]
    gateway = (REPO / "flux" / "runtime" / "_gateway.py").read_text()
    assert f'add_get("{url[2]}"' in gateway


def test_compose_runs_postgres_with_logical_wal(compose) -> None:
    postgres = compose["services"]["postgres"]
    image = postgres["image"]
    assert re.search(r"(postgres|pg)[:-]?(17|18)\b", image), image
    command = postgres["command"]
    words = command if isinstance(command, list) else shlex.split(command)
    settings = [words[i + 1] for i, w in enumerate(words) if w == "-c"]
    assert "wal_level=logical" in settings


def test_compose_builds_the_dockerfile_and_connects_flux_to_postgres(compose) -> None:
    flux = compose["services"]["flux"]
    context = (DOCKER / flux["build"]["context"]).resolve()
    assert context == REPO
    assert (context / flux["build"]["dockerfile"]).is_file()
    project = context / flux["build"]["args"]["PROJECT"]
    assert (project / "flux.toml").is_file()
    url = flux["environment"]["DATABASE_URL"]
    assert re.match(r"postgresql://\w+:\w+@postgres:5432/\w+$", url)
    postgres_env = compose["services"]["postgres"]["environment"]
    assert url == (f"postgresql://{postgres_env['POSTGRES_USER']}:"
                   f"{postgres_env['POSTGRES_PASSWORD']}@postgres:5432/"
                   f"{postgres_env['POSTGRES_DB']}")
    assert "postgres" in flux["depends_on"]


def documented_variables() -> set[str]:
    """The variables in the table of docker/README.md's "Environment variables"."""
    text = (DOCKER / "README.md").read_text()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.M))


def variables_read_by_flux() -> set[str]:
    names: set[str] = set()
    for path in [*(REPO / "flux").rglob("*.py"), *(REPO / "cli").glob("*.py")]:
        if path.name == "_check.py":
            continue  # names the variables it forbids functions to read
        names |= set(re.findall(r"\"((?:FLUX|DATABASE|XDG|OTEL)_[A-Z_]+)\"", path.read_text()))
    return names


def test_the_documented_variables_are_exactly_those_flux_reads() -> None:
    documented = documented_variables()
    assert "DATABASE_URL" in documented and "FLUX_ADMIN_TOKEN" in documented
    assert documented == variables_read_by_flux()


def test_every_variable_compose_sets_is_documented_or_a_project_secret(compose) -> None:
    flux = compose["services"]["flux"]
    project = REPO / flux["build"]["args"]["PROJECT"]
    secrets = tomllib.loads((project / "flux.toml").read_text()).get("secrets", {})
    allowed = documented_variables() | set(secrets.values())
    environment = flux["environment"]
    names = set(environment) if isinstance(environment, dict) else \
        {item.split("=", 1)[0] for item in environment}
    assert names <= allowed, names - allowed
