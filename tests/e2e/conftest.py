"""Fixtures for the container tests: the CPU image built offline, a user-defined network, and a PostgreSQL
server the containers reach on that network's gateway (the host side of the bridge)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.docker import Network, build_cpu_image, require_engine
from tests.pg import PostgresServer


@pytest.fixture(scope="session")
def cpu_image() -> str:
    require_engine()
    return build_cpu_image()


@pytest.fixture(scope="module")
def network(cpu_image: str) -> Iterator[Network]:
    net = Network.create()
    yield net
    net.remove()


@pytest.fixture(scope="module")
def network_postgres(network: Network) -> Iterator[PostgresServer]:
    """A real PostgreSQL listening on the network's gateway, accepting logins from its subnet only."""
    with PostgresServer(also_listen_on=[network.gateway], also_allow=[network.subnet]) as server:
        yield server
