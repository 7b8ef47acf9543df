"""The parts of a study's start that need no database: the recipe trial, the order of first trials,
values checked against the space, and the default pruner."""

from __future__ import annotations

import optuna
import pytest

from sideformer.config import Config, SearchConfig, load_config
from sideformer.errors import UserError
from sideformer.search_space import outside_space, parse_space, to_stored
from sideformer.search_start import first_trials, recipe_trial
from sideformer.tune import _pruner, trials_ahead


def test_the_recipe_trial_is_the_config_s_own_values_inside_the_space() -> None:
    space = parse_space(Config().search.space)
    # SegFormer's recipe; warm-up 1500 and batch 8 are inside the default space too.
    assert recipe_trial(Config(), space) == {
        "optim.lr": 6e-5,
        "optim.weight_decay": 0.01,
        "optim.head_lr_mult": 10.0,
        "optim.warmup_steps": 1500,
        "train.batch_size": 8,
    }
    # A configured value outside the space is left to the sampler rather than enqueued out of bounds.
    config = load_config(overrides=["optim.lr=0.1", "train.batch_size=2"])
    kept = {"optim.weight_decay", "optim.head_lr_mult", "optim.warmup_steps"}
    assert set(recipe_trial(config, space)) == kept


def test_list_choices_are_stored_as_json_and_steps_are_respected() -> None:
    (crop,) = parse_space({"data.crop_size": {"type": "categorical", "choices": [[256, 256], [512, 512]]}})
    assert to_stored(crop, [512, 512]) == "[512, 512]"
    assert to_stored(crop, [128, 128]) is None
    (warmup,) = parse_space({"optim.warmup_steps": {"type": "int", "low": 0, "high": 1500, "step": 100}})
    assert to_stored(warmup, 300) == 300
    assert to_stored(warmup, 350) is None and to_stored(warmup, 2.5) is None


def test_outside_space_names_the_key_and_the_value() -> None:
    space = parse_space(Config().search.space)
    with pytest.raises(UserError, match=r"from x: optim.lr=0.5 is outside today's search.space"):
        outside_space({"optim.lr": 0.5}, space, "from x")
    with pytest.raises(UserError, match=r"'model.pretrained' is not in today's search.space"):
        outside_space({"model.pretrained": "nvidia/mit-b1"}, space, "from x")


def test_first_trials_put_the_warm_start_first_and_never_repeat_the_recipe() -> None:
    recipe = {"optim.lr": 6e-5}
    assert first_trials([{"optim.lr": 1e-4}, {"optim.lr": 1e-4}], recipe) == [{"optim.lr": 1e-4}, recipe]
    assert first_trials([recipe], recipe) == [recipe]
    assert first_trials([], {}) == []


def test_the_default_pruner_is_successive_halving_from_the_third_epoch() -> None:
    search = SearchConfig()
    pruner = _pruner(search)
    assert search.pruner == "asha" and isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert pruner._min_resource == 3 and pruner._reduction_factor == 3


def test_a_queued_retry_counts_against_the_budget_of_a_trial_started_after_it() -> None:
    """A restarted worker fails its dead trial and queues a retry; another worker starting a new trial in
    that moment must count the queued retry, which will run, or the study finishes one trial too many."""
    study = optuna.create_study()
    distributions = {"x": optuna.distributions.FloatDistribution(0.0, 10.0)}
    for x in (1.0, 2.0, 3.0):
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=distributions, value=x))
    study.enqueue_trial({"x": 4.0})  # trial 3: the retry, not yet taken by its worker
    fresh = study._storage.get_trial_number_from_id(study._storage.create_new_trial(study._study_id))
    assert trials_ahead(study, fresh) == 4  # a budget of 4 is taken: the new trial is surplus
    assert trials_ahead(study, study.ask().number) == 3  # the retry, taken, still has its place
