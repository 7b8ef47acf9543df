"""Atomic file writes: a reader sees the old file or the new one, never half of one.

This is also where a full disk is noticed: a write that runs out of space leaves no temporary file and
the previous version of the target untouched, and ends in one `DiskFull` line naming the target.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sideformer.errors import UserError

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 1 << 20
"""Below this many free bytes a failed write is blamed on the disk, whatever the library raised
(torch.save to a path reports a full disk as `RuntimeError: ... unexpected pos`)."""


class DiskFull(UserError):
    """A write ran out of space (or quota). The message names the file and what is left."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        target = Path(target)
        free = _free_bytes(target)
        room = f" ({_human(free)} free there)" if free is not None else ""
        super().__init__(
            f"{target}: the disk is full{room}; nothing was half-written and earlier files are intact. "
            f"Free some space (or give a larger volume) and run the same command again."
        )


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def nearly_full(path: str | os.PathLike[str]) -> bool:
    free = _free_bytes(Path(path))
    return free is not None and free < NEARLY_FULL_BYTES


@contextmanager
def disk_full_as_error(target: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full disk while writing `target` (an OSError ENOSPC/EDQUOT) into `DiskFull(target)`."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(target) from None
        raise


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only if the block succeeds."""
    target = Path(target)
    if target.is_dir():
        raise UserError(f"{target} is a folder; give the path of a file to write.")
    with disk_full_as_error(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    # mkstemp makes the file 0600; give it the mode open() would, so that other users (a container's
    # uid reading a dataset, the other pods of a job) can read what we write.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    full = False
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except UserError:
        raise
    except Exception as exc:
        full = is_disk_full(exc) or nearly_full(target.parent)  # before the temp file frees its space
        if not full:
            raise
    finally:
        tmp_path.unlink(missing_ok=True)
    if full:
        raise DiskFull(target)  # after the cleanup, so that its message says what is really free


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _free_bytes(path: Path) -> int | None:
    """Bytes this user may still write on the filesystem holding `path` (its nearest existing parent)."""
    for folder in (path, *path.parents):
        try:
            stats = os.statvfs(folder)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize
    return None


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2) + "\n")


def atomic_write_with(target: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Let `write(tmp_path)` produce the file (e.g. torch.save), then move it into place."""
    with atomic_path(target) as tmp:
        write(tmp)


def append_line(target: str | os.PathLike[str], line: str) -> None:
    """Append one line; on a full disk the file is cut back to what it was (no half line) and
    `DiskFull` is raised."""
    target = Path(target)
    data = memoryview(line.encode("utf-8") + b"\n")
    with disk_full_as_error(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            os.ftruncate(fd, size)
            raise
        finally:
            os.close(fd)
