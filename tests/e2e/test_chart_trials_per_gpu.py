"""tune.trialsPerGpu: each tune worker runs `sideformer search --trials-per-gpu N` on its one GPU."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.e2e import manifests as m


def worker_jobs(**set_values) -> list[dict]:
    objects = m.render_chart(*m.VALUES_PRESETS["gpu"], set_values=set_values or None)
    return [j for j in m.find(objects, "PyTorchJob") if j in m.component(objects, "tune-worker")]


def test_trials_per_gpu_reaches_the_command_and_each_worker_holds_one_gpu() -> None:
    assert "--trials-per-gpu" not in m.run_spec(worker_jobs(**{"tune.gpusPerNode": 1})[0]).args
    for job in worker_jobs(**{"tune.trialsPerGpu": 4, "tune.gpusPerNode": 1}):
        args = m.run_spec(job).args
        assert args[args.index("--trials-per-gpu") + 1] == "4"
        assert job["spec"]["nprocPerNode"] == "1"
        assert m.container(m.pytorchjob_pod(job, "Master"))["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("conflict", [{"tune.gpusPerNode": 2}, {"tune.nodesPerTrial": 2}])
def test_trials_per_gpu_refuses_several_gpus_or_nodes_per_trial(conflict: dict) -> None:
    with pytest.raises(Exception, match=r"tune.trialsPerGpu > 1 shares one GPU"):
        worker_jobs(**{"tune.trialsPerGpu": 2, "tune.gpusPerNode": 1, **conflict})


def test_the_schema_refuses_zero_trials_per_gpu() -> None:
    with pytest.raises(helm.HelmValuesError, match="trialsPerGpu"):
        worker_jobs(**{"tune.trialsPerGpu": 0})
