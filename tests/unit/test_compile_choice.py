"""train.compile=auto: CUDA graphs for one CUDA process without accumulation; the CPU default unchanged."""

from __future__ import annotations

from sideformer.compile_choice import choose_compile
from sideformer.config import load_config


def choice(device: str, world_size: int = 1, *overrides: str):
    return choose_compile(load_config(overrides=list(overrides)).train, device, world_size)


def test_cpu_stays_eager_by_default() -> None:
    assert not choice("cpu").enabled
    assert not choice("cpu", 4).enabled


def test_one_cuda_process_gets_cuda_graphs_by_default() -> None:
    picked = choice("cuda")
    assert picked.enabled and picked.mode == "reduce-overhead" and picked.cuda_graphs


def test_ddp_and_gradient_accumulation_stay_eager_on_cuda() -> None:
    assert not choice("cuda", 2).enabled
    assert not choice("cuda", 1, "train.grad_accum=2").enabled


def test_explicit_settings_win() -> None:
    assert not choice("cuda", 1, "train.compile=false").enabled
    forced = choice("cpu", 1, "train.compile=true")
    assert forced.enabled and forced.mode == "default" and not forced.cuda_graphs
    assert choice("cuda", 2, "train.compile=true").mode == "reduce-overhead"
    assert choice("cuda", 1, "train.compile_mode=max-autotune").mode == "max-autotune"
