"""One process writes an output folder at a time.

`output_lock(folder)` holds an exclusive `fcntl.flock` on FOLDER/.sideformer.lock for as long as the
block runs, and writes its holder (pid, host, command, start time) into the file. A second process
refuses at once with one line naming that holder. The kernel drops the lock when its process ends, however
it ends (SIGKILL, OOM, a node's reboot), so a lock left behind never blocks the next run: its file is
simply locked again. At the end the holder removes the lock file, and the folders it made for it if
nothing else was written there (a run refused for bad input leaves no trace).

Re-entrant within a process: `tune` trains its final model into a folder it already holds. Search
workers do not lock the study's top-level folder (several share it); each trial's `train` locks its own
trial folder, so a retried trial waits for nothing once the dead worker that held it is gone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from sideformer.atomic import disk_full_as_error
from sideformer.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = ".sideformer.lock"


@dataclass
class _Held:
    fd: int
    depth: int = 1
    created_folders: list[Path] = field(default_factory=list)
    """Folders made for the lock, deepest first: removed again at release when nothing but the lock
    file was written into them."""
    path: Path = field(default_factory=Path)


_held: dict[Path, _Held] = {}
"""Locks this process holds, by resolved lock file."""


def lock_file_for(output: str | os.PathLike[str]) -> Path:
    """The lock of an output folder, or of a single output file (`export --onnx FILE`): beside it."""
    output = Path(output)
    if output.suffix and not output.is_dir():
        return output.with_name(f".{output.name}.lock")
    return output / LOCK_FILE


@contextmanager
def output_lock(
    output: str | os.PathLike[str], flag: str = "--output", wait_seconds: float = 0.0
) -> Iterator[None]:
    """Hold `output` (a folder, created if missing, or a file's place) for the duration of the block;
    `UserError` naming the holder when another live process has it (after up to `wait_seconds`)."""
    path = lock_file_for(output)
    key = path.resolve()
    if key in _held:
        _held[key].depth += 1
    else:
        held = _acquire(path, Path(output), flag, wait_seconds)
        if held is None:  # a filesystem without locks
            yield
            return
        _held[key] = held
    try:
        yield
    finally:
        _release(key)


def _acquire(path: Path, output: Path, flag: str, wait_seconds: float) -> _Held | None:
    created_folders = [folder for folder in path.parents if not folder.exists()]
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline, waiting = time.monotonic() + wait_seconds, False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            busy = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            if busy and time.monotonic() < deadline:
                if not waiting:
                    log.info("%s is in use by %s; waiting up to %.0f s for it", output, holder, wait_seconds)
                    waiting = True
                time.sleep(1.0)
                continue
            if busy:
                raise UserError(
                    f"{flag} {output} is in use by {holder}; wait for that run to end (or stop it), "
                    f"or choose another {flag}."
                ) from None
            # A filesystem without locks (ENOLCK, EOPNOTSUPP): run unguarded rather than not at all.
            log.warning("%s: cannot lock it (%s); make sure no other run writes there", output, exc)
            return None
        # The previous holder may have removed the file (its cleanup) after we opened it: a lock on that
        # file would guard nothing. Lock the file that is there now instead.
        if _same_file(fd, path):
            break
        os.close(fd)
    with suppress(OSError):  # a full disk still lets us hold the lock; naming the holder is a courtesy
        _write_holder(fd)
    return _Held(fd, created_folders=created_folders, path=path)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _release(key: Path) -> None:
    held = _held[key]
    held.depth -= 1
    if held.depth > 0:
        return
    del _held[key]
    # Removed while still locked: whoever opened the file meanwhile finds it gone and retries.
    held.path.unlink(missing_ok=True)
    for folder in held.created_folders:
        try:
            folder.rmdir()
        except OSError:  # something was written there
            break
    os.close(held.fd)  # closing the descriptor releases the flock


def _write_holder(fd: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": _redact(" ".join(["sideformer", *sys.argv[1:]])),
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {holder['pid']} on {holder['host']} (`{holder['command']}`, since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written itself yet
        return "another sideformer process"


def _redact(command: str) -> str:
    """Database URLs on a command line may carry a password: never copy it into a file."""
    return re.sub(r"(://[^:/@\s]*):[^@\s]*@", r"\1:***@", command)
