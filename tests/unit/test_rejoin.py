"""The supervisor that keeps a pod in its group (`sideformer.rejoin`), with real child processes standing
in for torchrun: each run reports its training processes' exit codes as torchrun's children do, and the
supervisor decides whether to start it again."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch.distributed

from sideformer.cli import main
from sideformer.distributed import lost_a_peer
from tests.integration.conftest import REPO

# A stand-in for torchrun: its run number N (counted in a file) starts one process per worker exit code in
# CODES[N], each reporting it as a training process does, then exits with EXITS[N], as torchrun does (1
# whenever a worker failed).
CHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    counter = Path(sys.argv[1]); runs = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(runs + 1))
    codes, exits = eval(sys.argv[2]), eval(sys.argv[3])
    for code in codes[min(runs, len(codes) - 1)]:  # each from a process of its own, as workers are
        report = f"from sideformer.rejoin import report_exit; report_exit({code})"
        subprocess.run([sys.executable, "-c", report], check=True)
    if sys.argv[4] == "sleep":
        time.sleep(60)
    sys.exit(exits[min(runs, len(exits) - 1)])
    """
)


def supervised(tmp_path: Path, codes: list[list[int]], exits: list[int], limit: int = 3, sleep: bool = False):
    counter = tmp_path / "runs"
    child = [sys.executable, "-c", CHILD, str(counter), repr(codes), repr(exits), "sleep" if sleep else "-"]
    supervisor = f"from sideformer.rejoin import supervise; exit(supervise({child!r}, {limit}))"
    command = [sys.executable, "-c", supervisor]
    proc = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    return proc, counter


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_success_is_not_run_again(tmp_path: Path) -> None:
    proc, counter = supervised(tmp_path, [[]], [0])
    assert finish(proc) == (0, "") and counter.read_text() == "1"


def test_a_lost_peer_rejoins_until_the_group_succeeds(tmp_path: Path) -> None:
    proc, counter = supervised(tmp_path, [[75], [143, 75], []], [1, 1, 0])
    code, err = finish(proc)
    assert code == 0 and counter.read_text() == "3", err
    assert "training processes exited with [75]); rejoining it (1 of 3)" in err
    assert "training processes exited with [75, 143]); rejoining it (2 of 3)" in err


def test_a_killed_worker_with_no_report_rejoins(tmp_path: Path) -> None:
    proc, _ = supervised(tmp_path, [[], []], [1, 0])
    code, err = finish(proc)
    assert code == 0 and "(torchrun exited 1); rejoining it (1 of 3)" in err


@pytest.mark.parametrize(("codes", "expected"), [([2], 2), ([1], 1), ([75, 2], 2), ([1, 2, 143], 2)])
def test_the_pods_own_failure_ends_it_at_once(tmp_path: Path, codes: list[int], expected: int) -> None:
    """A user error or a bug would happen again: the container exits (with 2 if a user error is among
    them, so its exit code says what to fix) and its restart counts against the backoff."""
    proc, counter = supervised(tmp_path, [codes], [1])
    code, err = finish(proc)
    assert (code, counter.read_text(), err) == (expected, "1", "")


def test_rejoins_are_bounded(tmp_path: Path) -> None:
    proc, counter = supervised(tmp_path, [[75]], [1], limit=2)
    code, err = finish(proc)
    assert code == 1 and counter.read_text() == "3", err
    assert "gave up after 2 rejoin(s) (SIDEFORMER_REJOINS)" in err


def test_sigterm_is_passed_on_and_never_rejoined(tmp_path: Path) -> None:
    proc, counter = supervised(tmp_path, [[143]], [1], sleep=True)
    while not counter.exists():
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert (code, counter.read_text(), err) == (128 + signal.SIGTERM, "1", "")


def test_lost_a_peer_knows_the_errors_a_dead_peer_raises() -> None:
    gloo = "[gloo/transport/tcp/pair.cc:553] Connection closed by peer [10.0.0.7]:6026"
    assert lost_a_peer(RuntimeError(gloo))
    assert lost_a_peer(torch.distributed.DistNetworkError("Failed to recv, got 0 bytes"))
    assert lost_a_peer(torch.distributed.DistBackendError("NCCL communicator was aborted"))
    assert not lost_a_peer(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not lost_a_peer(ValueError("closed"))


@pytest.mark.parametrize(
    ("variable", "value"), [("SIDEFORMER_REJOINS", "three"), ("SIDEFORMER_ELASTIC_MAX_RESTARTS", "-1")]
)
def test_a_bad_setting_is_one_line_before_torchrun_starts(
    variable: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    operator = {
        "PET_NNODES": "2",
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": "1",
    }
    for key, setting in {**operator, variable: value}.items():
        monkeypatch.setenv(key, setting)
    output = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"sideformer: error: {variable}={value!r}: expected a whole number")
        and err.count("\n") == 1
    )
    assert not output.exists()
