"""Shared fixtures: small datasets written by the project's own synthesiser and by hand."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`small_disk("70m")` mounts a tmpfs of that size and returns its folder: a real filesystem that
    fills up (ENOSPC from the kernel, not a mocked OSError). `resize(folder, "200m")` frees space the way
    a user would by deleting files. Needs root (CI runs as root); in CI a failed mount fails the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            message = f"cannot mount a {size} tmpfs ({done.stderr.strip()}); these tests need root"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "--lazy", str(folder)], check=False)
