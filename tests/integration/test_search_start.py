"""How a study starts and stops: the recipe trial and --warm-start enqueued once at creation, bad warm
starts refused before anything is written, --timeout shared by the workers of one PostgreSQL study, and
`sideformer study report` on a study in PostgreSQL."""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sideformer.config import load_config
from sideformer.search_space import parse_space
from sideformer.tune import open_study
from tests.helpers import wait_until
from tests.integration.conftest import sideformer
from tests.integration.test_tune import create_study, search_cmd, start, wait_all, write_config
from tests.integration.test_tune_cli import assert_one_line_error

pytestmark = pytest.mark.slow

SPACE_KEYS = {"optim.lr", "optim.weight_decay"}


def study_create(url: str, config: Path, name: str, *extra: str) -> list[str]:
    return sideformer("study", "create", "--storage", url, "--study", name, "--config", str(config), *extra)


def previous_study(url: str, name: str = "old", direction: str = "maximize") -> list[dict[str, float]]:
    """A finished study of the same space, its trials told by hand; returns their params, best first."""
    study = optuna.create_study(storage=url, study_name=name, direction=direction)
    study.set_user_attr("objective", "val_miou" if direction == "maximize" else "val_loss")
    told = []
    for i, value in enumerate([0.30, 0.50, 0.10, 0.40]):
        params = {"optim.lr": 1e-3 * (i + 1), "optim.weight_decay": 0.01 * (i + 1)}
        study.enqueue_trial(params)
        trial = study.ask()
        trial.suggest_float("optim.lr", 1e-10, 1e-2, log=True)
        trial.suggest_float("optim.weight_decay", 1e-4, 1e-1, log=True)
        study.tell(trial, value)
        told.append((value, params))
    return [params for _, params in sorted(told, key=lambda vp: vp[0], reverse=direction == "maximize")]


def waiting_params(url: str, name: str) -> list[dict[str, float]]:
    """The parameters enqueued in study `name`, in queue order (a waiting trial has them as fixed_params)."""
    study = optuna.load_study(study_name=name, storage=url)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return [t.system_attrs["fixed_params"] for t in sorted(waiting, key=lambda t: t.number)]


def test_warm_start_from_a_study_enqueues_its_best_trials_first_then_the_recipe_once(
    tmp_path: Path, postgres_url: str, run
) -> None:
    best_first = previous_study(postgres_url)
    config = write_config(tmp_path / "search.yaml")
    for _ in range(2):  # a second creation (another worker, a restarted Job) adds nothing
        proc = run(study_create(postgres_url, config, "new", "--warm-start", "old"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    recipe = {"optim.lr": 6e-5, "optim.weight_decay": 0.01}  # the config's own values: SegFormer's recipe
    assert waiting_params(postgres_url, "new") == [*best_first[:3], recipe]


def test_warm_start_from_a_file_runs_its_parameters_as_the_first_trial(
    synth_dataset: Path, tmp_path: Path, run
) -> None:
    hyperparams = tmp_path / "best_hyperparams.json"
    previous = {"optim.lr": 0.002, "optim.weight_decay": 0.003}
    hyperparams.write_text(json.dumps({"objective": "val_miou", "params": previous, "best_epoch": 1}))
    config = write_config(tmp_path / "search.yaml", n_trials=1, epochs=1, pruner="none")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = run(search_cmd(synth_dataset, tmp_path / "out", config, url, "--warm-start", str(hyperparams)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = optuna.load_study(study_name="test", storage=url).get_trials(deepcopy=False)
    assert trials[0].state == TrialState.COMPLETE and trials[0].params == previous
    assert trials[1].state == TrialState.WAITING
    assert trials[1].system_attrs["fixed_params"]["optim.lr"] == pytest.approx(6e-5)  # then the recipe


def test_a_warm_start_given_for_a_study_that_exists_is_not_read_and_only_study_create_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The chart gives every worker the creator's --warm-start, for the worker that finds no study yet; the
    others join the study as it is: at INFO, without reading the previous study (it may be gone by the
    time a worker restarts). `sideformer study create`, whose user asked for a seeded study, warns."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    best_first = previous_study(url)
    config = load_config(write_config(tmp_path / "search.yaml"))
    space = parse_space(config.search.space)
    with caplog.at_level(logging.INFO, logger="sideformer"):
        open_study(config, space, url, "new", "old")
        assert "starts with 4 enqueued trial(s)" in caplog.text and "already existed" not in caplog.text
        seeded = waiting_params(url, "new")
        assert seeded[:3] == best_first[:3]
        optuna.delete_study(study_name="old", storage=url)

        for warn_if_existed, level in ((False, logging.INFO), (True, logging.WARNING)):
            caplog.clear()
            open_study(config, space, url, "new", "old", warn_if_existed=warn_if_existed)
            (record,) = [r for r in caplog.records if "already existed" in r.getMessage()]
            assert record.levelno == level
            assert "--warm-start only seeds a new study" in record.getMessage()
    assert waiting_params(url, "new") == seeded


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing file", ("nowhere.json", "file not found")),
        ("missing study", ("--warm-start gone", "no study named 'gone'")),
        ("outside the space", ("optim.lr=0.5", "outside today's search.space")),
        ("unknown key", ("'optim.momentum' is not in today's search.space",)),
        ("other objective", ("it optimised val_loss", "val_miou")),
        ("other direction", ("it minimizes", "maximizes val_miou")),
    ],
)
def test_a_bad_warm_start_is_one_line_and_writes_nothing(
    tmp_path: Path, postgres_url: str, run, case: str, fragments: tuple[str, ...]
) -> None:
    config = write_config(tmp_path / "search.yaml")
    source = {
        "missing file": str(tmp_path / "nowhere.json"),
        "missing study": "gone",
        "other direction": "old",
    }.get(case, str(tmp_path / "best.json"))
    if case == "other direction":
        study = optuna.create_study(storage=postgres_url, study_name="old", direction="minimize")
        study.enqueue_trial({"optim.lr": 1e-3})  # no objective attribute: only its direction tells
    params = {"outside the space": {"optim.lr": 0.5}, "unknown key": {"optim.momentum": 0.9}}.get(
        case, {"optim.lr": 1e-3}
    )
    objective = "val_loss" if case == "other objective" else "val_miou"
    (tmp_path / "best.json").write_text(json.dumps({"objective": objective, "params": params}))

    proc = run(study_create(postgres_url, config, "new", "--warm-start", source))
    assert_one_line_error(proc, *fragments)
    assert "new" not in {s.study_name for s in optuna.get_all_study_summaries(postgres_url)}


def test_a_bad_warm_start_creates_no_output_or_database(synth_dataset: Path, tmp_path: Path, run) -> None:
    config = write_config(tmp_path / "search.yaml")
    proc = run(sideformer("search", "--data", str(synth_dataset), "--output", str(tmp_path / "out"),
                          "--config", str(config), "--warm-start", "earlier-study"))  # fmt: skip
    assert_one_line_error(proc, "--warm-start earlier-study", "no study database")
    assert not (tmp_path / "out").exists()


def test_timeout_is_shared_by_the_workers_and_leaves_no_trial_running(
    synth_dataset: Path, tmp_path: Path, postgres_url: str, run
) -> None:
    budget = 100  # far more than fits in the time budget
    config = write_config(tmp_path / "search.yaml", n_trials=budget, epochs=2, pruner="none")
    create_study(config, postgres_url, run)
    output = tmp_path / "out"
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    command = search_cmd(synth_dataset, output, config, postgres_url, "--seed", "0", "--timeout", "30")
    procs = [start(command, logs[0])]
    study = optuna.load_study(study_name="test", storage=postgres_url)
    # The first worker with a timeout sets the study's deadline; a later worker's own timeout moves nothing.
    stored = wait_until(lambda: study.user_attrs.get("deadline"), 300, lambda: logs[0].read_text())
    command = search_cmd(synth_dataset, output, config, postgres_url, "--seed", "1", "--timeout", "3600")
    procs.append(start(command, logs[1]))
    wait_all(procs, logs)

    study = optuna.load_study(study_name="test", storage=postgres_url)
    assert study.user_attrs["deadline"] == stored
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    started = [t for t in trials if t.datetime_start is not None]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert started and len(finished) < budget
    # No trial started after the deadline (Optuna stores naive local times; the deadline is UTC).
    deadline = datetime.datetime.fromisoformat(stored).astimezone().replace(tzinfo=None)
    assert all(t.datetime_start <= deadline for t in started), [t.datetime_start for t in started]
    assert all("no new trial starts" in log.read_text() for log in logs)
    assert json.loads((output / "best_hyperparams.json").read_text())["finished_trials"] == len(finished)


def test_study_create_stores_the_deadline(tmp_path: Path, postgres_url: str, run) -> None:
    config = write_config(tmp_path / "search.yaml")
    before = datetime.datetime.now(datetime.timezone.utc)
    assert run(study_create(postgres_url, config, "timed", "--timeout", "3600")).returncode == 0
    deadline = datetime.datetime.fromisoformat(
        optuna.load_study(study_name="timed", storage=postgres_url).user_attrs["deadline"]
    )
    assert before + datetime.timedelta(seconds=3600) <= deadline


def report_cmd(url: str, name: str, out: Path) -> list[str]:
    return sideformer("study", "report", "--storage", url, "--study", name, "--output", str(out))


def tell_trials(url: str, name: str) -> None:
    """A small finished study in `url`: two completed trials and a pruned one, with epoch curves."""
    study = optuna.create_study(storage=url, study_name=name, direction="maximize")
    study.set_user_attr("objective", "val_miou")
    for i, (curve, state) in enumerate(
        [([0.1, 0.2, 0.3], TrialState.COMPLETE), ([0.05], TrialState.PRUNED), ([0.2, 0.25, 0.4], None)]
    ):
        trial = study.ask()
        trial.suggest_float("optim.lr", 1e-5, 1e-2, log=True)
        trial.suggest_categorical("optim.head_lr_mult", [1.0, 10.0])
        for epoch, value in enumerate(curve, 1):
            trial.report(value + i * 0.01, epoch)
        study.tell(trial, max(curve) if state != TrialState.PRUNED else None, state=state)


def test_study_report_writes_the_top_trials_and_optuna_s_plots(
    tmp_path: Path, postgres_url: str, run
) -> None:
    tell_trials(postgres_url, "done")
    out = tmp_path / "report"
    proc = run(report_cmd(postgres_url, "done", out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("study 'done': 3 trial(s), 2 complete, 1 pruned")
    assert lines[1].split()[:3] == ["rank", "trial", "val_miou"]
    assert lines[2].split()[:3] == ["1", "2", "0.4000"]  # best first
    for name in ("optimization_history.png", "param_importances.png", "intermediate_values.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"wrote {out / name}" in proc.stdout


def test_study_report_on_a_study_without_finished_trials_is_one_line(
    tmp_path: Path, postgres_url: str, run
) -> None:
    config = write_config(tmp_path / "search.yaml")
    assert run(study_create(postgres_url, config, "fresh")).returncode == 0  # holds the waiting recipe
    out = tmp_path / "report"
    proc = run(report_cmd(postgres_url, "fresh", out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines() == ["study 'fresh' has no finished trial yet: nothing to report."]
    assert not out.exists()


def test_a_trial_that_trained_every_epoch_is_complete_even_below_the_rung(
    synth_dataset: Path, tmp_path: Path, run
) -> None:
    """Successive halving has a rung at every 3**k epochs, the last epoch included: a trial that reaches
    it below the top third has already trained to the end, and pruning it would throw its result away."""
    config = write_config(tmp_path / "search.yaml", n_trials=4, epochs=1, start_from_config=False)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert run(study_create(url, config, "test")).returncode == 0
    # Three trials far above anything the next one can reach, each seen by the same pruner at its rung.
    study = optuna.load_study(study_name="test", storage=url)
    study.pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    for _ in range(3):
        trial = study.ask({
            "optim.lr": optuna.distributions.FloatDistribution(1e-10, 1e-2, log=True),
            "optim.weight_decay": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        })  # fmt: skip
        trial.report(0.99, step=1)
        assert not trial.should_prune()
        study.tell(trial, 0.99)
    proc = run(search_cmd(synth_dataset, tmp_path / "out", config, url))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = study.get_trials(deepcopy=False)[-1]
    assert last.number == 3 and last.state == TrialState.COMPLETE, (last.state, last.intermediate_values)
    assert last.value < 0.99
