"""A real, throwaway PostgreSQL server for the tests: its own cluster in a temp folder, on 127.0.0.1
(and, when asked, on a docker network's gateway)."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict
from urllib.parse import quote

SYSTEM_USER = "sideformer-pg"
INSTALL_HINT = "run `sudo tests/pg/install-postgres.sh` (Debian/Ubuntu) or install the PostgreSQL server"
_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class Dsn(TypedDict):
    host: str
    port: int
    user: str
    password: str
    dbname: str


def find_bindir(debian_root: Path = Path("/usr/lib/postgresql")) -> Path:
    """The directory holding initdb/pg_ctl/postgres: Debian's highest version first, then PATH."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.name))

    candidates = sorted(debian_root.glob("*/bin"), key=lambda p: version(p.parent))
    on_path = shutil.which("pg_ctl")
    # Reversed: highest Debian version wins; PATH is the fallback (its pg_ctl may be a symlink into bindir).
    for bindir in [*reversed(candidates), *([Path(on_path).resolve().parent] if on_path else [])]:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found under "
        f"{debian_root}/*/bin or on PATH: {INSTALL_HINT}. The tests that need PostgreSQL fail "
        "rather than skip, so that CI never passes without them."
    )


def ensure_system_user(name: str = SYSTEM_USER) -> pwd.struct_passwd:
    """Create the unprivileged user PostgreSQL runs as when we are root (postgres refuses to run as root)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    try:  # A concurrent test process may have created it first; that is success too.
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(f"could not create system user {name!r}: {result.stderr.strip()}") from None


def _children(pid: int) -> list[int]:
    """Child process ids, from /proc (Linux); none elsewhere."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            # The fields after the ")" that closes the command name: state, ppid, ...
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temp folder: started by `start()`, removed with its data by `close()`.

    The superuser `user` authenticates with `password` over TCP on 127.0.0.1 (scram-sha-256); the unix
    socket lives in the private temp folder. The port is chosen at the first start and kept across
    `restart()`, so clients (a pool with `pool_pre_ping`) reconnect to the same URL.
    """

    def __init__(
        self,
        user: str = "sideformer",
        dbname: str = "sideformer",
        *,
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        also_listen_on: Sequence[str] = (),
        also_allow: Sequence[str] = (),
    ) -> None:
        """`settings` are extra postgresql.conf parameters, such as {"log_statement": "all"}. The server
        listens on 127.0.0.1 and on `also_listen_on`, and accepts logins from 127.0.0.1 and the networks
        (CIDR) of `also_allow`: a docker network's gateway and subnet let containers reach it."""
        self.user, self.dbname, self.password = user, dbname, secrets.token_urlsafe(18)
        self.host, self.port = "127.0.0.1", 0
        self.listen = [self.host, *also_listen_on]
        self.clients = ["127.0.0.1/32", *also_allow]
        self.settings, self.startup_timeout = dict(settings or {}), startup_timeout
        self.bindir = find_bindir()
        # As root, run everything as the dedicated user; otherwise as ourselves.
        self._account = ensure_system_user() if os.geteuid() == 0 else None
        # mkdtemp in the system temp dir, not pytest's tmp_path: that one is 0700 root, which the
        # postgres user could not traverse. The path also stays short enough for a unix socket (<108 bytes).
        self.base = Path(tempfile.mkdtemp(prefix="sideformer-pg-"))
        if self._account:
            os.chown(self.base, self._account.pw_uid, self._account.pw_gid)
        self.datadir, self.logfile = self.base / "data", self.base / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        atexit.register(self.close)  # The temp folder exists from here on, even if start() is never called.

    # -- addresses ------------------------------------------------------------------------------------

    @property
    def dsn(self) -> Dsn:
        """Connection parameters for `psycopg2.connect(**server.dsn)`."""
        return Dsn(host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.dbname)

    def url_for(self, dbname: str, host: str | None = None) -> str:
        """The SQLAlchemy URL of `dbname` through `host`, a listen address (default 127.0.0.1)."""
        host = host or self.host
        return f"postgresql+psycopg2://{quote(self.user)}:{quote(self.password)}@{host}:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `dbname` database."""
        return self.url_for(self.dbname)

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        if self.is_running():
            return self
        if not self.datadir.exists():
            self._initdb()
        first = self.port == 0
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if first:  # Only the first start picks the port: clients keep their URL across restarts.
                self.port = free_port()
            log_start = self.logfile.stat().st_size if self.logfile.exists() else 0
            self._spawn()
            try:
                self.wait_ready()
                break
            except RuntimeError:
                with self.logfile.open("rb") as log:
                    log.seek(log_start)
                    this_run = log.read().decode(errors="replace")
                # Transient: another process took the port between choosing and binding, or backends of
                # a killed server still hold its shared memory for a moment.
                transient = (first and "could not bind" in this_run) or "is still in use" in this_run
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if first:
            self.create_database(self.dbname, maintenance_db="postgres")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Shut down like `pg_ctl stop -m MODE`: smart waits for clients, fast disconnects them."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(_SIGNALS[mode])
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the server and its backends, as a crash would; the next `start()` recovers from WAL."""
        if self._proc is None:
            return
        # The backends too: one busy with a query outlives its postmaster until the query ends, and holds
        # the shared memory the next start needs. Each backend is in its own session, so no killpg; and
        # the postmaster is stopped first so that it forks no new one while we look.
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGSTOP)
        for pid in [*_children(self._proc.pid), self._proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._proc.wait()  # Reap it: a zombie still "owns" postmaster.pid and blocks the next start.
        self._proc = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Stop the server and delete its data; safe to call more than once."""
        atexit.unregister(self.close)
        if os.getpid() != self._owner_pid:  # A forked child exiting must not take the server with it.
            return
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll until a password login over TCP works; raise with the server log tail if it never does."""
        import psycopg2

        deadline = time.monotonic() + (timeout or self.startup_timeout)
        error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_running():
                raise RuntimeError(f"PostgreSQL exited during startup. Log:\n{self.log_tail()}")
            try:
                psycopg2.connect(**{**self.dsn, "dbname": "postgres"}, connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:  # Not listening yet, or still starting up.
                error = exc
                time.sleep(0.05)
        raise RuntimeError(
            f"PostgreSQL did not accept connections within {timeout or self.startup_timeout:.0f} s "
            f"(last error: {error}). Log:\n{self.log_tail()}"
        )

    # -- databases ------------------------------------------------------------------------------------

    def create_database(self, name: str | None = None, *, maintenance_db: str | None = None) -> str:
        """Create an empty database (a random name by default) and return its SQLAlchemy URL."""
        name = name or f"test_{secrets.token_hex(6)}"
        self._execute("CREATE DATABASE {}", name, maintenance_db)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients first."""
        self._execute("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"

    # -- internals ------------------------------------------------------------------------------------

    def _execute(self, statement: str, identifier: str, dbname: str | None = None) -> None:
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(**{**self.dsn, "dbname": dbname or self.dbname})
        try:
            conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction.
            with conn.cursor() as cur:
                cur.execute(sql.SQL(statement).format(sql.Identifier(identifier)))
        finally:
            conn.close()

    def _as_account(self) -> dict[str, Any]:
        """subprocess arguments that drop root for the dedicated user (its own group, no root groups)."""
        if self._account is None:
            return {"cwd": self.base}
        acc = self._account
        env = {**os.environ, "HOME": str(self.base), "USER": acc.pw_name, "LOGNAME": acc.pw_name}
        return {"user": acc.pw_uid, "group": acc.pw_gid, "extra_groups": [], "env": env, "cwd": self.base}

    def _initdb(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._account:
            os.chown(pwfile, self._account.pw_uid, self._account.pw_gid)
        pwfile.chmod(0o600)
        cmd = [
            str(self.bindir / "initdb"),
            f"--pgdata={self.datadir}",
            f"--username={self.user}",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",  # Same sorting everywhere, whatever locales the machine has.
            "--no-sync",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, **self._as_account())
        pwfile.unlink()
        if result.returncode:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        # Password logins over TCP from `clients` only. The socket may trust: its folder is private (0700).
        (self.datadir / "pg_hba.conf").write_text(
            "local all all trust\n" + "".join(f"host all all {cidr} scram-sha-256\n" for cidr in self.clients)
        )

    def _spawn(self) -> None:
        settings = {
            "port": str(self.port),
            "listen_addresses": ",".join(self.listen),
            "unix_socket_directories": str(self.base),
            "max_connections": "200",  # Tuning tests run 32 concurrent workers, each with a pool.
            # Throwaway data: an OS crash may lose it, a postgres crash (kill()) does not, since each commit
            # still writes its WAL to the OS. (synchronous_commit=off would lose the last commits on kill.)
            "fsync": "off",
            "full_page_writes": "off",
            **self.settings,
        }
        cmd = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        # postgres itself rather than `pg_ctl start`, which daemonizes it: as our child, it can be waited
        # for and reaped after kill(). Its own session keeps the terminal's Ctrl-C away: pytest gets it
        # and stops the server.
        with self.logfile.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                **self._as_account(),
            )
