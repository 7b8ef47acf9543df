"""SIGTERM in the middle of an epoch (a node drain, a preemption), then `--resume`: the run ends with the
same weights as one that was never stopped, and no optimizer step is repeated or skipped.

Real processes and a real signal: `sideformer train` as a subprocess (and under torchrun with two
processes), SIGTERM sent while epoch 1 trains. On CPU with one thread per process the arithmetic is
deterministic, so "the same weights" is exact equality (tolerance 0), as are the per-epoch losses.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from sideformer.data.synth import write_synthetic_dataset
from tests.integration.conftest import REPO, TINY, env_for, sideformer
from tests.integration.test_tune import search_cmd, write_config

pytestmark = pytest.mark.slow

IMAGES, BATCH = 48, 2
BATCHES = IMAGES // BATCH  # per epoch, one process
SETTINGS = [*TINY, "train.batch_size=2", "train.epochs=2", "train.log_every=1", "checkpoint.select=last"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("steps") / "data"
    return write_synthetic_dataset(root, train=IMAGES, valid=4, size=(64, 64), seed=5)


def train_command(dataset: Path, output: Path, *extra: str) -> list[str]:
    settings = [arg for s in SETTINGS for arg in ("--set", s)]
    return sideformer("train", "--data", str(dataset), "--output", str(output), *settings, *extra)


def finished(command: list[str]) -> str:
    proc = subprocess.run(command, env=env_for(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def stopped_by_sigterm(
    command: list[str], delay: float, exit_code: int = 128 + signal.SIGTERM, after: str = "training SegFormer"
) -> str:
    """Run `command`, send SIGTERM `delay` seconds after training starts, return its output."""
    proc = subprocess.Popen(
        command, env=env_for(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(after):
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    code = proc.wait(timeout=300)
    output = "".join(lines)
    assert code == exit_code, f"exit {code}\n{output}"
    return output


def same_weights(a: Path, b: Path) -> None:
    ours = torch.load(a / "final_ckpts/best_model.pth", weights_only=True)
    theirs = torch.load(b / "final_ckpts/best_model.pth", weights_only=True)
    assert ours.keys() == theirs.keys()
    different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def same_losses(a: Path, b: Path) -> None:
    def losses(run: Path) -> list[tuple[float, float]]:
        history = json.loads((run / "metrics.json").read_text())["history"]
        return [(h["train_loss"], h["val_loss"]) for h in history]

    assert losses(a) == losses(b)


def check_interrupted_then_resumed(output: str, resumed: str, batches: int) -> int:
    stop = re.search(r"stopped by SIGTERM in epoch 1 after (\d+) batch\(es\)", output)
    assert stop, f"no mid-epoch stop in:\n{output}"
    done = int(stop.group(1))
    assert 0 < done < batches, output
    assert f"resuming epoch 1 after {done} of its {batches} batches" in resumed, resumed
    return done


def test_sigterm_mid_epoch_then_resume_gives_the_same_weights(dataset: Path, tmp_path: Path) -> None:
    reference, run = tmp_path / "uninterrupted", tmp_path / "interrupted"
    finished(train_command(dataset, reference))

    output = stopped_by_sigterm(train_command(dataset, run), delay=0.3)
    assert (run / "temp_ckpts/last.pth").is_file() and not (run / "final_ckpts").exists()
    resumed = finished(train_command(dataset, run, "--resume"))
    done = check_interrupted_then_resumed(output, resumed, BATCHES)

    same_weights(run, reference)
    same_losses(run, reference)
    print(f"stopped after {done} of {BATCHES} batches; resumed to the same weights (exact)")


def test_sigterm_mid_epoch_under_torchrun_then_resume_gives_the_same_weights(
    dataset: Path, tmp_path: Path
) -> None:
    """Two processes (gloo): torchrun passes SIGTERM to both, they agree on the step, rank 0 saves."""
    reference, run = tmp_path / "uninterrupted", tmp_path / "interrupted"
    two = ("--nproc-per-node", "2")
    finished(train_command(dataset, reference, *two))

    # torchrun's agent, which the command became, exits 1 when its workers stop on a signal.
    output = stopped_by_sigterm(train_command(dataset, run, *two), delay=0.5, exit_code=1)
    assert output.count("sideformer: stopped by SIGTERM") == 1, output  # rank 0 speaks for the job
    resumed = finished(train_command(dataset, run, "--resume", *two))
    done = check_interrupted_then_resumed(output, resumed, BATCHES // 2)

    same_weights(run, reference)
    same_losses(run, reference)
    print(f"two processes: stopped after {done} of {BATCHES // 2} batches each; same weights (exact)")


def test_a_trial_stopped_by_sigterm_is_queued_again_and_resumes_mid_epoch(
    dataset: Path, tmp_path: Path
) -> None:
    """A search worker drained mid-trial: the trial is re-queued at once (no waiting for its heartbeat to
    go stale) and the next worker continues it from the saved step."""
    config = write_config(tmp_path / "search.yaml", n_trials=1, epochs=2, pruner="none")
    url, output = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "search"
    command = [*search_cmd(dataset, output, config, url), "--set", "train.batch_size=2"]

    stopped_by_sigterm(command, delay=0.3, after="training SegFormer")
    study = optuna.load_study(study_name="test", storage=url)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING], states

    resumed = finished(command)
    assert "trial 1 (retry of 0)" in resumed, resumed
    assert re.search(r"resuming epoch 1 after \d+ of its 24 batches", resumed), resumed
    study = optuna.load_study(study_name="test", storage=url)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]
