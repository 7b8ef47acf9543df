"""Kubeflow Trainer v2 (`trainer.kubeflow.org/v1alpha1`, v2.3.0) objects as the controller reads them.

A TrainJob names a runtime (a namespaced TrainingRuntime or a ClusterTrainingRuntime) whose JobSet template
holds the pods; the TrainJob's `trainer` sets the image, args, env and resources of the container named
`node`, its `runtimePatches` patch the pod templates (a strategic merge: lists by name, volumeMounts by
mountPath), and the torch plugin adds the PET_* variables. Here, from the kubeflow/trainer sources (read
through the project's code search, which holds versions near v2.3.0, not a checkout of the tag):

- `pkg/runtime/core/trainingruntime.go` (mergeRuntimePatches), `plugins/jobset/builder.go` (Trainer:
  image, command, args, resourcesPerNode replace; env is upserted by name);
- `plugins/torch/torch.go`: PET_NNODES = numNodes, PET_NPROC_PER_NODE = numProcPerNode, PET_NODE_RANK from
  the Job completion index, PET_MASTER_ADDR = `<trainjob>-node-0-0.<trainjob>`, PET_MASTER_PORT = 29400;
  a TrainJob whose trainer.env sets any of them is rejected;
- `plugins/jobset/jobset.go`: pods `<trainjob>-node-0-<i>` on the headless Service `<trainjob>` (JobSet's
  subdomain); an override may only name containers and init containers the runtime has (checked there
  for podTemplateOverrides; v2.3.0's runtimePatches schema gives a patched container no image field, so
  a patch cannot add one either).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.e2e import manifests as m

API_VERSION = "trainer.kubeflow.org/v1alpha1"
SCHEMA_DIR = "trainer-v2.3.0"
TRAINJOB_CRD = "trainer.kubeflow.org_trainjobs.yaml"
# The namespaced TrainingRuntime CRD is not in the shared folder; its spec is the same Go type
# (TrainingRuntimeSpec) as the ClusterTrainingRuntime's, so that schema checks both kinds.
RUNTIME_CRD = "trainer.kubeflow.org_clustertrainingruntimes.yaml"
RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
TRAINER_JOB = "node"  # the replicated job and the container the torch plugin configures
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
MASTER_PORT = 29400  # constants.ContainerTrainerPort
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
JOB_POD_RESTART_POLICIES = {"OnFailure", "Never"}


def schema_path(name: str) -> Path:
    path = m.schemas_dir() / SCHEMA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the Trainer v2.3.0 CRD is missing; set SIDEFORMER_SCHEMAS to a folder holding "
            f"{SCHEMA_DIR}/{name}"
        )
    return path


@functools.cache
def crd_validator(name: str) -> jsonschema.Draft7Validator:
    from tests.e2e.validation import strict_crd_schema

    crd = yaml.safe_load(schema_path(name).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = strict_crd_schema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def torch_distributed_runtime() -> dict[str, Any]:
    """Trainer v2.3.0's torch-distributed ClusterTrainingRuntime as its Helm chart ships it, with the
    chart's label helpers (the only template lines in it) left out."""
    text = (m.schemas_dir() / SCHEMA_DIR / "runtime-torch-distributed.yaml").read_text()
    return yaml.safe_load("\n".join(line for line in text.splitlines() if "{{" not in line))


def runtime_of(job: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The runtime a TrainJob references: one of `objects`, or the stock torch-distributed one."""
    ref = job["spec"]["runtimeRef"]
    kind = ref.get("kind", "ClusterTrainingRuntime")
    found = m.find(objects, kind, ref["name"])
    if found:
        return found[0]
    if (kind, ref["name"]) == ("ClusterTrainingRuntime", "torch-distributed"):
        return torch_distributed_runtime()
    raise LookupError(f"TrainJob {job['metadata']['name']}: no {kind} {ref['name']}")


def replicated_job(runtime: dict[str, Any], name: str = TRAINER_JOB) -> dict[str, Any]:
    for rjob in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        if rjob["name"] == name:
            return rjob
    raise KeyError(f"{runtime['kind']} {runtime['metadata']['name']} has no replicated job {name!r}")


def runtime_pod(runtime: dict[str, Any], name: str = TRAINER_JOB) -> dict[str, Any]:
    """The pod template spec of a runtime's replicated job."""
    return replicated_job(runtime, name)["template"]["spec"]["template"]["spec"]


def _merge_list(
    base: list[dict[str, Any]],
    patch: list[dict[str, Any]],
    key: str,
    merge: Callable[..., None] = dict.update,
) -> list[dict[str, Any]]:
    """A strategic merge of two lists keyed by `key`: items with the same key merge, others append."""
    merged = [copy.deepcopy(item) for item in base]
    for item in patch:
        same = next((b for b in merged if b[key] == item[key]), None)
        if same is None:
            merged.append(copy.deepcopy(item))
        else:
            merge(same, copy.deepcopy(item))
    return merged


def _merge_container(base: dict[str, Any], patch: dict[str, Any]) -> None:
    for field, value in patch.items():
        if field == "env":
            base["env"] = _merge_list(base.get("env", []), value, "name")
        elif field == "volumeMounts":
            base["volumeMounts"] = _merge_list(base.get("volumeMounts", []), value, "mountPath")
        else:
            base[field] = copy.deepcopy(value)


def patched_pod_template(job: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """The `node` pod template after the TrainJob's runtimePatches (the fields the chart patches: lists
    of containers and volumes merge by name, volumeMounts by mountPath, the rest replaces)."""
    template = copy.deepcopy(replicated_job(runtime)["template"]["spec"]["template"])
    for patch in job["spec"].get("runtimePatches", []):
        for rjob in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            if rjob["name"] != TRAINER_JOB:
                continue
            pod_patch = rjob["template"]["spec"]["template"]
            for field in ("labels", "annotations"):
                values = (pod_patch.get("metadata") or {}).get(field)
                if values:
                    template.setdefault("metadata", {}).setdefault(field, {}).update(values)
            spec = template["spec"]
            for field, value in (pod_patch.get("spec") or {}).items():
                if field in ("containers", "initContainers"):
                    spec[field] = _merge_list(spec.get(field, []), value, "name", _merge_container)
                elif field == "volumes":
                    spec[field] = _merge_list(spec.get(field, []), value, "name")
                else:
                    spec[field] = copy.deepcopy(value)
    return template


def trainjob_pod(job: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The spec of every pod of a TrainJob (they share one template) as JobSet creates it, less the
    torch plugin's variables (`plugin_env`): the runtime's, patched, with spec.trainer applied."""
    spec = patched_pod_template(job, runtime_of(job, objects))["spec"]
    trainer = job["spec"].get("trainer") or {}
    node = m.container(spec, TRAINER_JOB)
    for field in ("image", "command", "args"):
        if field in trainer:
            node[field] = copy.deepcopy(trainer[field])
    if "resourcesPerNode" in trainer:
        node["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
    node["env"] = _merge_list(node.get("env", []), trainer.get("env", []), "name")
    return spec


def num_nodes(job: dict[str, Any], runtime: dict[str, Any]) -> int:
    trainer = job["spec"].get("trainer") or {}
    return int(trainer.get("numNodes", runtime["spec"]["mlPolicy"].get("numNodes", 1)))


def pod_name(job: dict[str, Any], index: int) -> str:
    """Host name of node `index` (JobSet: <jobset>-<replicated job>-<job index>-<pod index>)."""
    return f"{job['metadata']['name']}-{TRAINER_JOB}-0-{index}"


def master_addr(job: dict[str, Any]) -> str:
    """Node 0's DNS name: its host name on the JobSet's headless Service, named after the TrainJob."""
    return f"{pod_name(job, 0)}.{job['metadata']['name']}"


def plugin_env(job: dict[str, Any], runtime: dict[str, Any], index: int) -> dict[str, str]:
    """What the torch plugin sets in container `node` of pod `index` (PET_NODE_RANK is a fieldRef to
    the Job completion index, i.e. `index`). numProcPerNode must be explicit here: "auto" depends on the
    node (the CPU count on CPU-only nodes)."""
    nproc = (job["spec"].get("trainer") or {}).get("numProcPerNode")
    if not isinstance(nproc, int):
        raise ValueError(f"numProcPerNode {nproc!r}: the manifests here always set an integer")
    return {
        "PET_NNODES": str(num_nodes(job, runtime)),
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_NODE_RANK": str(index),
        "PET_MASTER_ADDR": master_addr(job),
        "PET_MASTER_PORT": str(MASTER_PORT),
    }


COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # the annotation Job pods carry


def node_pod_spec(
    job: dict[str, Any], runtime: dict[str, Any], objects: list[dict[str, Any]]
) -> dict[str, Any]:
    """The spec JobSet gives every pod of a TrainJob, with what the torch plugin adds to container `node`:
    the PET_* variables (PET_NODE_RANK as the same fieldRef to the pod's Job completion index) and the
    rendezvous port."""
    spec = trainjob_pod(job, objects)
    node = m.container(spec, TRAINER_JOB)
    env = {k: v for k, v in plugin_env(job, runtime, 0).items() if k != "PET_NODE_RANK"}
    rank = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}
    plugin = [
        *({"name": k, "value": v} for k, v in env.items() if k in ("PET_NNODES", "PET_NPROC_PER_NODE")),
        {"name": "PET_NODE_RANK", "valueFrom": rank},
        *({"name": k, "value": v} for k, v in env.items() if k in ("PET_MASTER_ADDR", "PET_MASTER_PORT")),
    ]
    node["env"] = _merge_list(node.get("env", []), plugin, "name")
    node["ports"] = _merge_list(node.get("ports", []), [{"containerPort": MASTER_PORT}], "containerPort")
    return spec


def torch_rule_errors(job: dict[str, Any], runtime: dict[str, Any]) -> list[str]:
    """What Trainer v2.3's webhooks and torch plugin reject, or run other than meant, that the CRD schema
    accepts."""
    errors = []
    trainer = job["spec"].get("trainer") or {}
    reserved = sorted({e["name"] for e in trainer.get("env", [])} & set(RESERVED_ENV))
    if reserved:
        errors.append(f"trainer.env sets reserved {reserved}: the torch plugin sets them")
    nproc = trainer.get("numProcPerNode")
    if not isinstance(nproc, int) or nproc < 1:
        errors.append(
            f"numProcPerNode {nproc!r}: set a positive integer (the default 'auto' is the CPU count)"
        )
    if "torch" not in (runtime["spec"].get("mlPolicy") or {}):
        errors.append(f"runtime {runtime['metadata']['name']}: mlPolicy.torch missing (no PET_* variables)")
    try:
        rjob = replicated_job(runtime)
    except KeyError as error:
        return [*errors, str(error)]
    if (rjob["template"].get("metadata") or {}).get("labels", {}).get(ANCESTOR_LABEL) != "trainer":
        errors.append(f"replicated job {TRAINER_JOB}: label {ANCESTOR_LABEL}=trainer missing")
    pod = rjob["template"]["spec"]["template"]["spec"]
    names = {c["name"] for c in [*pod.get("initContainers", []), *pod["containers"]]}
    if TRAINER_JOB not in {c["name"] for c in pod["containers"]}:
        errors.append(f"no container named {TRAINER_JOB!r} (containers: {sorted(names)})")
    if pod.get("restartPolicy", "OnFailure") not in JOB_POD_RESTART_POLICIES:
        errors.append(f"restartPolicy {pod['restartPolicy']!r}: Job pods take OnFailure or Never")
    for patch in job["spec"].get("runtimePatches", []):
        for prjob in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            spec = prjob["template"]["spec"]["template"].get("spec") or {}
            for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                if c["name"] not in names:
                    errors.append(f"runtimePatches: container {c['name']!r} is not in the runtime")
                if c["name"] == TRAINER_JOB and c.get("env"):
                    errors.append("runtimePatches: env of container 'node' goes in trainer.env")
    return errors
