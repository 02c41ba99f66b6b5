"""``flux init NAME``: a new project that runs at once with ``flux dev``."""

from __future__ import annotations

import re
from pathlib import Path

from flux._errors import ConfigError

FILES: dict[str, str] = {
    "flux.toml": '''name = "{name}"
port = 4000
capture = "trigger"     # or "wal"

[secrets]
# NAME = "ENVIRONMENT_VARIABLE" — ctx.secrets.get("NAME") reads that variable

[record]
# redact_fields = ["ssn"]          # JSON body keys hidden in every record
# max_body_bytes = 65536           # bodies over this are stored as a hash and a preview
# retention = "14d"                # flux gc and flux serve drop older days; pins stay
# sample_rate = 1.0                # share of successes recorded in full; failures always are

[app]
# anything here is ctx.config in your functions
''',
    "functions/create_user.py": '''"""Create a user.

Try it: curl -s localhost:4000/create_user -d '{{"email": "ada@example.com"}}'
"""

from flux import function


@function
async def create_user(ctx, input):
    email = input.get("email", "")
    if "@" not in email:
        raise ctx.error(400, "invalid_email", "email must contain @")
    user = await ctx.db.fetchone(
        "INSERT INTO users (email, plan) VALUES (%s, 'free') RETURNING id, email, plan",
        [email],
    )
    ctx.log.info("user created", user_id=user["id"])
    return user
''',
    "schema/001_users.sql": '''-- Applied by `flux dev` in name order, each file once.
CREATE TABLE IF NOT EXISTS users (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    plan       text NOT NULL DEFAULT 'free',
    created_at timestamptz NOT NULL DEFAULT now()
);
''',
    ".gitignore": '''.flux/
__pycache__/
''',
    "README.md": '''# {name}

A Flux app (`pip install flux-replay`). Every request is recorded: explain, replay, fix,
resume; `flux --help` lists the commands.

    flux dev                                   # http://localhost:4000, embedded PostgreSQL
    curl -s localhost:4000/create_user -d '{{"email": "ada@example.com"}}'
    curl -s localhost:4000/create_user -d '{{"email": "ada@example.com"}}'   # fails: duplicate
    flux ls                                    # the executions, newest first
    flux why <id>                              # why the second one failed

Functions live in `functions/` (one `@function` per module, routed `POST /<name>`), tables
in `schema/*.sql`. Flux keeps its own state in `.flux/`.
''',
}

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


def init_project(target: Path) -> list[Path]:
    """Create the project directory ``target`` with a sample function and table."""
    name = target.name
    if not _NAME.match(name):
        raise ConfigError(f"{name!r} is not a usable project name: use letters, digits, - "
                          "and _, starting with a letter")
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{target} already exists and is not empty")
    written = []
    for relative, template in FILES.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name), encoding="utf-8")
        written.append(path)
    return written
