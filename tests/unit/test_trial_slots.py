"""The slots of `search --trials-per-gpu`: their commands, environments and the settings they refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from sideformer import trial_slots
from sideformer.cli import main
from sideformer.config import load_config
from sideformer.data.dataset import default_workers
from sideformer.train_data import loader_workers


def test_each_slot_gets_its_seed_worker_id_and_no_group_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"SIDEFORMER_WORKER_ID": "pod-0", "PET_NNODES": "1", "MASTER_PORT": "23456"}.items():
        monkeypatch.setenv(key, value)
    argv = ["search", "--data", "d", "--trials-per-gpu", "3", "--seed=7", "--study", "s"]
    commands = trial_slots.slot_commands(3, argv, seed=7)
    for k, (command, _) in enumerate(commands):
        assert command[-9:] == [
            "-m",
            "sideformer",
            "search",
            "--data",
            "d",
            "--study",
            "s",
            "--seed",
            str(7 + k),
        ]
    assert [env["SIDEFORMER_WORKER_ID"] for _, env in commands] == [f"pod-0-slot{k}" for k in range(3)]
    assert [env["SIDEFORMER_TRIAL_SLOT"] for _, env in commands] == ["0/3", "1/3", "2/3"]
    assert all("PET_NNODES" not in env and "MASTER_PORT" not in env for _, env in commands)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(trial_slots.os, "cpu_count", lambda: 16)
    assert {env["OMP_NUM_THREADS"] for _, env in trial_slots.slot_commands(4, argv, None)} == {"4"}
    assert all("--seed" not in c for c, _ in trial_slots.slot_commands(2, argv, seed=None))


def test_slots_share_the_machine_s_loader_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trial_slots.SLOT_ENV, "1/4")
    assert trial_slots.slot() == (1, 4) and trial_slots.slots_sharing() == 4
    assert loader_workers(load_config()) == default_workers(4)
    trial_slots.limit_memory("cpu")  # no GPU: nothing to cap, and no error


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tune", "--set", "search.trials_per_gpu=2"], "`sideformer tune` runs its search in one process"),
        (["search", "--trials-per-gpu", "2", "--nproc-per-node", "2"], "cannot be combined with several"),
        (["search", "--trials-per-gpu", "0"], "search.trials_per_gpu = 0: must be >= 1"),
    ],
)
def test_settings_that_cannot_share_a_gpu_are_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    output = tmp_path / "out"
    assert main([*argv, "--data", str(tmp_path), "--output", str(output)]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()
