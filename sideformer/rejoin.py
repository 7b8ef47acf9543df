"""Keep a pod in its training group when another pod of the group restarts.

When one pod of a multi-pod job dies, every other pod's training processes fail with it (gloo closes its
sockets; torchrun's elastic agents lose their rendezvous store if the dead pod hosted it). If each pod's
container then exited, every pod would restart and each restart would count against the job's
`backoffLimit`. Instead, each pod's `sideformer` stays up as a small supervisor around torchrun: when the
group broke because of a peer, it starts torchrun again, which waits at the rendezvous for the restarted
pod, and training resumes from its last checkpoint. Only the pod that died restarts its container.

The supervisor tells a broken group from this pod's own failure by the exit codes its training processes
report (through files in `SIDEFORMER_EXIT_REPORTS`, since torchrun itself exits 1 whatever they did): a
user error (2) or a bug (1) would only happen again, so it ends the container; a lost peer (75), a stop
by torchrun's teardown or a killed process starts torchrun again, at most `SIDEFORMER_REJOINS` times
(default 3) per container. A SIGTERM to the supervisor (a node drain) is passed on and never rejoined.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from sideformer.errors import UserError

REPORTS_ENV = "SIDEFORMER_EXIT_REPORTS"
REJOINS_ENV = "SIDEFORMER_REJOINS"
DEFAULT_REJOINS = 3
LOST_PEER_EXIT = 75  # EX_TEMPFAIL: the group broke, not this process
OWN_FAILURES = {1: "an error", 2: "a user error"}  # what a relaunch would only repeat


def report_exit(code: int) -> None:
    """Called by a training process as it exits: leave its exit code where the supervisor reads it."""
    folder = os.environ.get(REPORTS_ENV)
    if folder and code != 0:
        with contextlib.suppress(OSError):  # the supervisor is gone, or its folder: nothing to tell
            (Path(folder) / str(os.getpid())).write_text(str(code))


def rejoin_limit() -> int:
    value = os.environ.get(REJOINS_ENV, str(DEFAULT_REJOINS))
    if not value.isdigit():
        raise UserError(f"{REJOINS_ENV}={value!r}: expected a whole number of rejoins (>= 0).")
    return int(value)


def supervise(command: list[str], limit: int) -> int:
    """Run `command` (torchrun) until it succeeds, this pod is told to stop, a training process fails on
    its own, or `limit` rejoins are spent; return the exit code for the container."""
    child: subprocess.Popen[bytes] | None = None
    stop_signal: int | None = None

    def pass_on(signum: int, _frame: object) -> None:
        nonlocal stop_signal
        stop_signal = signum
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    rejoins = 0
    while stop_signal is None:
        with tempfile.TemporaryDirectory(prefix="sideformer-exits-") as reports:
            child = subprocess.Popen(command, env={**os.environ, REPORTS_ENV: reports})
            if stop_signal is not None:  # it came while torchrun was starting
                child.send_signal(stop_signal)
            code = child.wait()
            worker_codes = sorted({int(p.read_text()) for p in Path(reports).iterdir()})
        if code == 0:
            return 0
        if stop_signal is not None:
            break
        own = [c for c in worker_codes if c in OWN_FAILURES]
        if own:
            return own[-1]  # 2 when a user error is among them: the container's exit says what to fix
        if rejoins == limit:
            _say(f"the training group broke again; gave up after {limit} rejoin(s) ({REJOINS_ENV})")
            return code
        rejoins += 1
        why = f"training processes exited with {worker_codes}" if worker_codes else f"torchrun exited {code}"
        _say(f"the training group broke ({why}); rejoining it ({rejoins} of {limit})")
    return 128 + stop_signal


def _say(message: str) -> None:
    print(f"sideformer: {message}", file=sys.stderr, flush=True)
