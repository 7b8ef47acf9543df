"""The throwaway PostgreSQL server the tuning tests rely on: real connections, restarts, isolation."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa

from tests.pg import PostgresServer
from tests.pg.server import find_bindir

pytestmark = pytest.mark.slow


def test_connects_with_password_over_loopback_only(postgres_server: PostgresServer) -> None:
    with psycopg2.connect(**postgres_server.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database(), 1 + 1")
        assert cur.fetchone() == ("sideformer", "sideformer", 2)
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == ("127.0.0.1",)
        cur.execute("SHOW max_connections")
        assert int(cur.fetchone()[0]) >= 200
    conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(**{**postgres_server.dsn, "password": "wrong"})


def test_url_works_with_sqlalchemy(postgres_server: PostgresServer) -> None:
    assert postgres_server.url.startswith("postgresql+psycopg2://sideformer:")
    engine = sa.create_engine(postgres_server.url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_database()")).scalar() == "sideformer"
    engine.dispose()


def test_restart_keeps_data_and_pool_reconnects(postgres_server: PostgresServer, postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url, pool_pre_ping=True)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x int)"))
        conn.execute(sa.text("INSERT INTO t VALUES (42)"))
    port = postgres_server.port

    postgres_server.restart()  # The pooled connection is now dead; pre-ping must replace it.

    assert postgres_server.is_running() and postgres_server.port == port
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT x FROM t")).scalar() == 42
    engine.dispose()


def test_recovers_after_kill_even_mid_query(postgres_server: PostgresServer, postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url, pool_pre_ping=True)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t AS SELECT 7 AS x"))
    # A backend busy computing outlives a killed postmaster unless kill() takes it down too.
    busy = psycopg2.connect(**{**postgres_server.dsn, "dbname": postgres_url.rsplit("/", 1)[1]})
    errors: list[Exception] = []

    def long_query() -> None:
        try:
            busy.cursor().execute("SELECT count(*) FROM generate_series(1, 10000000000)")
        except psycopg2.Error as exc:
            errors.append(exc)

    thread = threading.Thread(target=long_query)
    thread.start()
    time.sleep(0.3)

    postgres_server.kill()
    assert not postgres_server.is_running()
    postgres_server.start()  # Crash recovery replays the WAL: committed data survives.

    thread.join(timeout=10)
    assert errors and not thread.is_alive()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT x FROM t")).scalar() == 7
    engine.dispose()


def test_fresh_databases_are_independent(postgres_server: PostgresServer) -> None:
    a, b = (
        sa.create_engine(postgres_server.create_database()),
        sa.create_engine(postgres_server.create_database()),
    )
    with a.begin() as conn:
        conn.execute(sa.text("CREATE TABLE only_in_a (x int)"))
    with b.connect() as conn:
        assert not sa.inspect(conn).has_table("only_in_a")
        conn.execute(sa.text("CREATE TABLE only_in_a (y text)"))  # Same name, no clash.
    a.dispose()
    b.dispose()


def test_postgres_url_fixture_gives_an_empty_database(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_database()")).scalar().startswith("test_")
        assert sa.inspect(conn).get_table_names() == []
    engine.dispose()


def test_many_concurrent_connections(postgres_url: str) -> None:
    # The tuning tests run 32 workers, each with its own pool: well past the default of 100 in total.
    conns = [psycopg2.connect(postgres_url.replace("postgresql+psycopg2", "postgresql")) for _ in range(120)]
    for conn in conns:
        conn.close()


def test_runs_as_unprivileged_user_in_private_folder(postgres_server: PostgresServer) -> None:
    stat = os.stat(postgres_server.base)
    assert stat.st_mode & 0o077 == 0
    owner = postgres_server.datadir.stat().st_uid
    assert owner == stat.st_uid
    if os.geteuid() == 0:
        assert owner != 0


def test_close_removes_everything() -> None:
    with PostgresServer() as server:
        base, url = server.base, server.url
        assert server.is_running()
    assert not server.is_running() and not base.exists()
    with pytest.raises(sa.exc.OperationalError):
        sa.create_engine(url).connect()


def test_startup_failure_reports_the_server_log() -> None:
    server = PostgresServer(settings={"shared_buffers": "plenty"})
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited during startup.*invalid value.*shared_buffers"):
            server.start()
    finally:
        server.close()


def test_missing_binaries_fail_with_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"tests/pg/install-postgres\.sh"):
        find_bindir(tmp_path)
