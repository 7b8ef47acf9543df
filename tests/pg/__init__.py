"""A real PostgreSQL server for the tests, and the pytest fixtures that share it.

`tests/conftest.py` imports the fixtures: `from tests.pg import postgres_server, postgres_url`.
Without PostgreSQL installed, tests that use them fail (never skip): run `tests/pg/install-postgres.sh`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg.server import PostgresServer

__all__ = ["PostgresServer", "postgres_server", "postgres_url"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One running server for the whole test session; stopped and deleted at the end, pass or fail.

    A test that stops or kills it should `start()` it again; `postgres_url` does so when it finds it down.
    """
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL (`postgresql+psycopg2://...`) of a fresh, empty database, dropped after the test."""
    if not postgres_server.is_running():  # An earlier test killed or stopped it.
        postgres_server.start()
    url = postgres_server.create_database()
    yield url
    if postgres_server.is_running():
        postgres_server.drop_database(url.rsplit("/", 1)[1])
