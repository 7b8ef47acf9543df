"""Real multi-process training with torch.distributed (gloo on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import SegformerForSemanticSegmentation

from sideformer.data.metadata import load_metadata
from sideformer.distributed import DistEnv
from sideformer.validation import eval_loader, evaluate
from tests.integration.conftest import REPO, TINY, env_for, free_port, sideformer

pytestmark = pytest.mark.slow


def test_torchrun_two_ranks_identical_params_and_metrics_match_single_process(
    synth_dataset: Path, tmp_path: Path, run
) -> None:
    output, dumps = tmp_path / "run", tmp_path / "dumps"
    dumps.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        str(REPO / "tests/integration/ddp_worker.py"), str(synth_dataset), str(output), str(dumps),
        *TINY, "train.epochs=2",
    ]  # fmt: skip
    proc = run(cmd)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # DDP kept the replicas in lock-step: every parameter is bit-identical on both ranks.
    rank0 = torch.load(dumps / "params_rank0.pt", weights_only=True)
    rank1 = torch.load(dumps / "params_rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and len(rank0) > 100
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name

    # The validation numbers summed across ranks equal a one-process evaluation of the saved model.
    summary = json.loads((output / "metrics.json").read_text())
    best = summary["best"]
    meta = load_metadata(synth_dataset)
    model = SegformerForSemanticSegmentation.from_pretrained(output / "final_ckpts/model")
    single = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    loader = eval_loader(meta, "valid", base_size=64, batch_size=4, num_workers=0, env=single)
    result = evaluate(model, loader, meta.num_classes, meta.ignore_index, single)
    assert result.metrics.miou == pytest.approx(best["val_miou"], abs=1e-6)
    assert result.metrics.pixel_accuracy == pytest.approx(best["val_pixel_accuracy"], abs=1e-6)
    assert result.loss == pytest.approx(best["val_loss"], rel=1e-4)
    assert "2 process(es)" in proc.stdout


def test_only_rank_zero_touches_the_output(synth_dataset: Path, tmp_path: Path) -> None:
    """Two plain processes with the operator-style environment and *different* output folders:
    rank 1's folder must stay empty (it neither writes nor reads checkpoints)."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = env_for(
            RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port
        )
        cmd = sideformer("train", "--data", str(synth_dataset), "--output", str(tmp_path / f"out{rank}"))
        cmd += [arg for setting in [*TINY, "train.epochs=1"] for arg in ("--set", setting)]
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert (tmp_path / "out0/final_ckpts/best_model.pth").is_file()
    assert (tmp_path / "out0/metrics.json").is_file()
    assert not (tmp_path / "out1").exists()
    assert "epoch 1/1" in outputs[0] and "epoch 1/1" not in outputs[1]  # only rank 0 reports


def test_nproc_per_node_starts_torchrun_itself(synth_dataset: Path, tmp_path: Path, run) -> None:
    output, cache = tmp_path / "run", tmp_path / "cache"
    cmd = sideformer("train", "--nproc-per-node", "2", "--data", str(synth_dataset), "--output", str(output))
    # With data.preresize: rank 0 writes the resized copies while rank 1 waits, then both read them.
    settings = [*TINY, "train.epochs=1", "data.preresize=48", f"data.cache_dir={cache}"]
    cmd += [arg for setting in settings for arg in ("--set", setting)]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es)" in proc.stdout
    assert (output / "final_ckpts/model/config.json").is_file()
    assert len(list(cache.rglob("*.jpg"))) == len(load_metadata(synth_dataset).split("train"))
    assert proc.stdout.count("resized copies") + proc.stderr.count("resized copies") == 1  # rank 0 only
