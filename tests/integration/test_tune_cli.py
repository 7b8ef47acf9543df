"""`sideformer tune` end to end on the default SQLite storage, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import env_for, free_port, sideformer
from tests.integration.test_tune import write_config

pytestmark = pytest.mark.slow


def tune_cmd(data: Path, output: Path, config: Path, *extra: str) -> list[str]:
    return sideformer("tune", "--data", str(data), "--output", str(output), "--config", str(config), *extra)


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sideformer: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_tune_searches_then_trains_the_final_model(synth_dataset: Path, tmp_path: Path, run) -> None:
    config = write_config(tmp_path / "tune.yaml", n_trials=2, epochs=2, pruner="none")
    output = tmp_path / "tuned"
    proc = run(tune_cmd(synth_dataset, output, config, "--seed", "0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (output / "study.db").is_file()  # the default storage: SQLite in the output folder
    best = json.loads((output / "best_hyperparams.json").read_text())
    assert best["finished_trials"] == 2 and set(best["params"]) == {"optim.lr", "optim.weight_decay"}
    summary = json.loads((output / "metrics.json").read_text())
    assert summary["epochs_run"] == best["best_epoch"]
    assert (output / "final_ckpts/best_model.pth").is_file() and (output / "final_ckpts/model").is_dir()
    assert "on 24 image(s)" in proc.stdout  # the final run trains on train + valid (16 + 8)
    # The end-of-search report: the top trials, and Optuna's plots beside the outputs.
    assert "study 'sideformer': 2 trial(s), 2 complete" in proc.stdout
    for name in ("optimization_history.png", "intermediate_values.png"):
        assert (output / "search_report" / name).read_bytes()[:4] == b"\x89PNG", name
    final_config = yaml.safe_load((output / "config.yaml").read_text())
    assert final_config["optim"]["lr"] == pytest.approx(best["params"]["optim.lr"])

    # --skip-hyperopt reproduces the final training from the file alone, in another folder.
    again = tmp_path / "again"
    proc = run(tune_cmd(synth_dataset, again, config, "--skip-hyperopt", "--hyperparams-file",
                        str(output / "best_hyperparams.json")))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (again / "study.db").exists() and not (again / "trials").exists()
    assert json.loads((again / "metrics.json").read_text())["epochs_run"] == best["best_epoch"]
    assert yaml.safe_load((again / "config.yaml").read_text())["optim"]["lr"] == pytest.approx(
        best["params"]["optim.lr"]
    )


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('{"params": {"optim.lr": 0.001}}', "'best_epoch' must be a positive integer"),
        ('{"best_epoch": 3}', "expected an object with a 'params' mapping"),
        ('{"params": {"optim.learning_rate": 0.001}, "best_epoch": 3}', "unknown key 'optim.learning_rate'"),
    ],
)
def test_bad_hyperparameter_files(
    synth_dataset: Path, tmp_path: Path, run, content: str, fragment: str
) -> None:
    hyperparams = tmp_path / "best_hyperparams.json"
    hyperparams.write_text(content)
    config = write_config(tmp_path / "tune.yaml")
    proc = run(
        tune_cmd(
            synth_dataset, tmp_path / "out", config, "--skip-hyperopt", "--hyperparams-file", str(hyperparams)
        )
    )
    assert_one_line_error(proc, str(hyperparams), fragment)
    assert not (tmp_path / "out").exists()


def test_unknown_storage_scheme(synth_dataset: Path, tmp_path: Path, run) -> None:
    config = write_config(tmp_path / "tune.yaml")
    proc = run(tune_cmd(synth_dataset, tmp_path / "out", config, "--storage", "redis://localhost/0"))
    assert_one_line_error(proc, "unknown URL scheme", "postgresql+psycopg2://")


def test_unreachable_database(synth_dataset: Path, tmp_path: Path, run) -> None:
    config = write_config(tmp_path / "tune.yaml")
    url = f"postgresql+psycopg2://tuner:s3cret-password@127.0.0.1:{free_port()}/study"
    proc = run(sideformer("search", "--data", str(synth_dataset), "--output", str(tmp_path / "out"),
                          "--config", str(config), "--storage", url))  # fmt: skip
    assert_one_line_error(proc, "cannot open the study database", "127.0.0.1")
    assert "s3cret-password" not in proc.stdout + proc.stderr


def test_optuna_storage_environment_variable(synth_dataset: Path, tmp_path: Path, run) -> None:
    config = write_config(tmp_path / "tune.yaml", n_trials=1, epochs=1, pruner="none")
    storage = tmp_path / "elsewhere" / "study.db"
    env = env_for(OPTUNA_STORAGE=f"sqlite:///{storage}")
    proc = run(sideformer("search", "--data", str(synth_dataset), "--output", str(tmp_path / "out"),
                          "--config", str(config)), env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert storage.is_file() and not (tmp_path / "out" / "study.db").exists()
