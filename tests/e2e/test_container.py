"""The CPU image, built offline: its contract (non-root user, entrypoint, labels, no secrets) and training
in a read-only container. What the cluster runs with it, pod for pod, is rehearsed in test_rehearsal.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.e2e.docker import Container, docker, writable_dir
from tests.integration.conftest import TINY

pytestmark = pytest.mark.slow


def test_image_runs_the_cli_as_a_non_root_user(cpu_image: str) -> None:
    help_text = docker("run", "--rm", cpu_image, "--help").stdout
    assert "usage: sideformer" in help_text and "search" in help_text
    assert docker("run", "--rm", "--entrypoint", "id", cpu_image, "-u").stdout.strip() == "1000"

    config = json.loads(docker("image", "inspect", cpu_image).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"][-1] == "sideformer-entrypoint"
    assert config["Labels"]["org.opencontainers.image.title"] == "sideformer"
    baked = [
        e for e in config["Env"] if any(w in e.split("=")[0] for w in ("KEY", "TOKEN", "PASSWORD", "STORAGE"))
    ]
    assert not baked, f"secrets baked into the image: {baked}"


def test_training_in_a_read_only_container_writes_only_to_volumes(
    cpu_image: str, synth_dataset: Path, tmp_path: Path
) -> None:
    output = writable_dir(tmp_path / "output")
    settings = [s for s in TINY if not s.startswith("wandb")] + ["train.epochs=2"]  # W&B on, offline
    args = ["train", "--data", "/data", "--output", "/output/run"]
    for setting in settings:
        args += ["--set", setting]
    container = Container(
        name=f"sideformer-train-{tmp_path.name[-8:].lower()}",
        args=args,
        mounts={str(synth_dataset): "/data:ro", str(output): "/output"},
    )
    try:
        code = container.start().wait(timeout=600)
        logs = container.logs()
        assert code == 0, logs[-4000:]
        # --read-only: anything written outside /output and /tmp would have failed the run.
        run = output / "run"
        state = torch.load(run / "final_ckpts" / "best_model.pth", weights_only=True)
        assert any(k.startswith("decode_head") for k in state)
        assert (run / "final_ckpts" / "model" / "config.json").is_file()
        assert len(json.loads((run / "metrics.json").read_text())["history"]) == 2
        assert list((run / "wandb").glob("offline-run-*")), "W&B offline run not written to the volume"
        assert not (run / "temp_ckpts").exists()
    finally:
        container.remove()
