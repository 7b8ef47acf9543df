"""Fixtures for the container tests: the CPU image, built offline (image/build-offline.sh) once per run."""

from __future__ import annotations

import pytest

from tests.e2e.docker import build_cpu_image, require_engine


@pytest.fixture(scope="session")
def cpu_image() -> str:
    require_engine()
    return build_cpu_image()
