"""Shared fixtures: small datasets written by the project's own synthesiser and by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg import postgres_server, postgres_url  # noqa: F401  (real PostgreSQL fixtures)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset shared by the tests that only read it."""
    from sideformer.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synth") / "data", train=16, valid=8, test=4, size=(64, 64), seed=3
    )
