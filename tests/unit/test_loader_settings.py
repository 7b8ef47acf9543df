"""Settings whose defaults depend on the machine (data.num_workers: null), compile and checkpoint timing."""

from __future__ import annotations

import os

import pytest

from sideformer.config import load_config
from sideformer.data.dataset import default_workers
from sideformer.errors import UserError


def test_default_loader_workers_take_half_the_cores_shared_among_local_processes() -> None:
    cores = len(os.sched_getaffinity(0))
    assert default_workers(1) == max(2, min(16, cores // 2))
    assert default_workers(cores) == 2  # never fewer than 2, however many processes share the node
    assert default_workers(1) >= default_workers(2) >= default_workers(8)


def test_num_workers_null_is_the_default_and_a_count_still_overrides_it() -> None:
    assert load_config().data.num_workers is None
    assert load_config(overrides=["data.num_workers=3"]).data.num_workers == 3
    with pytest.raises(UserError, match=r"data\.num_workers"):
        load_config(overrides=["data.num_workers=-1"])


def test_compile_mode_takes_torch_compile_modes_only() -> None:
    assert (
        load_config(overrides=["train.compile_mode=reduce-overhead"]).train.compile_mode == "reduce-overhead"
    )
    with pytest.raises(UserError, match=r"train\.compile_mode"):
        load_config(overrides=["train.compile_mode=fast"])


def test_step_checkpoint_interval_must_be_positive() -> None:
    assert load_config(overrides=["checkpoint.every_minutes=2.5"]).checkpoint.every_minutes == 2.5
    with pytest.raises(UserError, match=r"checkpoint\.every_minutes"):
        load_config(overrides=["checkpoint.every_minutes=-3"])
