"""One pod of a two-pod training group dies; only that pod restarts, and training resumes.

Two "pods" on this machine, each a `sideformer train` with the environment the Training Operator gives
(PET_NNODES=2, PET_NODE_RANK, PET_MASTER_ADDR/PORT; for the elastic cases also PET_RDZV_* as
`elasticPolicy` sets them, or SIDEFORMER_ELASTIC_MAX_RESTARTS as the chart sets it for a TrainJob). The
test plays the kubelet with `restartPolicy: OnFailure`: a pod whose command exits non-zero is started
again. Once the first epoch is saved, one pod is SIGKILLed mid-epoch, every process of it, as a
container's death takes them all. Each case asserts that the surviving pod's container never exited (its
supervisor rejoined the group, or its elastic agent restarted its workers), the killed pod restarted
exactly once, and the run finished from its checkpoint. Killing node 0 takes down the rendezvous store
with it (static and c10d alike), the case the elastic agents alone do not survive.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sideformer.data.synth import write_synthetic_dataset
from tests.integration.conftest import REPO, TINY, env_for, free_port, sideformer

pytestmark = pytest.mark.slow

EPOCHS, IMAGES = 3, 192
SETTINGS = [*TINY, "train.batch_size=2", f"train.epochs={EPOCHS}", "checkpoint.select=last"]


@dataclass
class Pod:
    """One pod's container, restarted as OnFailure does; its log holds every run's output."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: list[str] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None

    def run_until_success(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.log.append(line)
            self.exits.append(self.process.wait())
            if self.exits[-1] == 0:
                return
            time.sleep(1)  # the kubelet's back-off, shortened

    def kill(self) -> None:
        """Every process of the pod, as a container's death takes them all (torchrun starts its workers in
        sessions of their own, so the process group alone is not enough)."""
        assert self.process is not None
        for pid in [self.process.pid, *_descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    @property
    def restarts(self) -> int:
        return len(self.exits) - 1 if self.exits and self.exits[-1] == 0 else len(self.exits)

    def text(self) -> str:
        return "".join(self.log)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rejoin") / "data"
    return write_synthetic_dataset(root, train=IMAGES, valid=4, size=(64, 64), seed=7)


def pods(dataset: Path, output: Path, rendezvous: str) -> list[Pod]:
    port, settings = free_port(), [arg for s in SETTINGS for arg in ("--set", s)]
    command = sideformer("train", "--data", str(dataset), "--output", str(output), "--resume", *settings)
    operator = {"PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
    result = []
    for rank in (0, 1):
        env = {**operator, "PET_NODE_RANK": str(rank), "PET_NNODES": "2"}
        if rendezvous == "static+elastic":  # a TrainJob with tune.elastic.enabled: the CLI turns it elastic
            env.update(SIDEFORMER_ELASTIC_MAX_RESTARTS="3")
        if rendezvous == "c10d":
            # As elasticPolicy sets it. On one machine both pods' addresses are loopback, so which one
            # hosts the store is said explicitly: node 0, the Master, as host-name matching does in a cluster.
            env.update(
                PET_NNODES="2:2",
                PET_RDZV_BACKEND="c10d",
                PET_RDZV_ENDPOINT=f"127.0.0.1:{port}",
                PET_MAX_RESTARTS="3",
                PET_RDZV_CONF=f"is_host={'true' if rank == 0 else 'false'}",
            )
        # Unbuffered, as the image runs it: the test watches the log as it is written.
        result.append(Pod(f"node-{rank}", command, env_for(PYTHONUNBUFFERED="1", **env)))
    return result


@pytest.mark.parametrize(
    ("rendezvous", "killed"),
    [("static", 0), ("static", 1), ("c10d", 0), ("c10d", 1), ("static+elastic", 0)],
    ids=["static-kill-0", "static-kill-1", "elastic-kill-0", "elastic-kill-1", "trainjob-elastic-kill-0"],
)
def test_one_pod_dies_and_only_it_restarts(
    dataset: Path, tmp_path: Path, rendezvous: str, killed: int
) -> None:
    group = pods(dataset, tmp_path / "run", rendezvous)
    victim, survivor = group[killed], group[1 - killed]
    deadline = time.monotonic() + 300
    threads = [threading.Thread(target=pod.run_until_success, args=(deadline,)) for pod in group]
    for thread in threads:
        thread.start()
    try:
        # Rank 0 logs each epoch's summary once it is saved: kill a moment later, in epoch 2.
        while time.monotonic() < deadline and f"epoch 1/{EPOCHS}" not in _logs(group):
            assert all(t.is_alive() for t in threads), _logs(group)
            time.sleep(0.2)
        time.sleep(0.3)
        progress = _logs(group).count("resuming from")
        killed_at = time.monotonic()
        victim.kill()
        while time.monotonic() < deadline and _logs(group).count("resuming from") == progress:
            time.sleep(0.2)
        seconds_to_progress = time.monotonic() - killed_at
        for thread in threads:
            thread.join(max(1.0, deadline - time.monotonic()))
    finally:
        for pod in group:
            pod.stop()
    logs = _logs(group)
    assert not any(t.is_alive() for t in threads), f"no finish within the deadline\n{logs}"

    assert victim.restarts == 1 and survivor.restarts == 0, f"{victim.exits} {survivor.exits}\n{logs}"
    # The survivor's supervisor starts torchrun again when its torchrun gave up: always under a static
    # rendezvous, and under an elastic one when the store died with node 0 (otherwise its agent restarted
    # its workers itself).
    rejoined = "rejoining it (1 of 3)" in survivor.text()
    assert rejoined == (rendezvous == "static" or killed == 0), survivor.text()
    assert re.search(r"resuming from .* after epoch [12]", logs), logs
    history = json.loads((tmp_path / "run/metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1)), history
    print(
        f"\n{rendezvous} rendezvous, node {killed} killed: resumed after {seconds_to_progress:.1f} s, "
        f"{victim.restarts} container restart(s); the survivor "
        f"{'rejoined' if rejoined else 'restarted its workers'} without restarting"
    )


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _logs(group: list[Pod]) -> str:
    return "".join(f"--- {pod.name} (exits {pod.exits}) ---\n{pod.text()}" for pod in group)
