"""The project's Kubernetes manifests as Python objects, produced by the real engines, never re-implemented.

- The Helm chart `helm/sideformer-tune` through helm-python-sdk (Helm v4's own Go engine, offline).
- The kustomize overlays `k8s/overlays/{gpu,cpu}` through `kubectl kustomize` (kustomize v5, built into
  kubectl), or a standalone `kustomize build`. `SIDEFORMER_KUBECTL` names the kubectl binary to use.
- `k8s/final-pytorchjob.yaml` as users apply it.

The chart and kustomize tests read everything from here, and so do the container tests: `run_spec` gives
the rendered command line, environment and mounts of a pod's container, `config_text` the rendered config
file, and `operator_env` the variables the Training Operator injects, so a container can run exactly what
the cluster would.

Render with the release name `sideformer-tune` (the default): `k8s/` refers to that release's objects.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "sideformer-tune"
K8S_DIR = REPO / "k8s"
K8S_FINAL = K8S_DIR / "final-pytorchjob.yaml"
KIND_VALUES = CHART_DIR / "ci" / "kind-values.yaml"
GPU_VALUES = CHART_DIR / "examples" / "gpu-values.yaml"
RELEASE = "sideformer-tune"
NAMESPACE = "default"
OVERLAYS = ("gpu", "cpu")
# The final training as a Kubeflow Trainer v2 TrainJob: overlay -> the PyTorchJob overlay it mirrors.
TRAINJOB_OVERLAYS = {"trainjob": "gpu", "trainjob-cpu": "cpu"}

# Values presets the tests render: name -> values files (in order, later files win).
VALUES_PRESETS: dict[str, tuple[Path, ...]] = {"default": (), "kind": (KIND_VALUES,), "gpu": (GPU_VALUES,)}

# What the Training Operator v1.9 sets in every PyTorchJob pod (see DESIGN.md, Training).
OPERATOR_MASTER_PORT = 23456
# The init container it appends to Worker pods when the job has a Master (kubeflow/trainer v1.9,
# pkg/controller.v1/pytorch/initcontainer.go: default template, image and --pytorch-init-container-max-tries).
OPERATOR_INIT_IMAGE = "alpine:3.10"
OPERATOR_INIT_MAX_TRIES = 100


def schemas_dir() -> Path:
    """$SIDEFORMER_SCHEMAS, else the project's shared folder ../shared/schemas beside the repository, else
    the copy vendored in tests/e2e/schemas (a clone with no shared folder beside it)."""
    if os.environ.get("SIDEFORMER_SCHEMAS"):
        return Path(os.environ["SIDEFORMER_SCHEMAS"])
    shared = REPO.parent / "shared" / "schemas"
    return shared if shared.is_dir() else Path(__file__).parent / "schemas"


# --- Helm -----------------------------------------------------------------------------------------------


def load_values(*values_files: Path | str, set_values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Values as `helm install -f A -f B --set ...` composes them: maps merge deeply, later files win, lists
    are replaced. A top-level key of `set_values` with dots is a path, as in --set (`"tune.workers": 3`);
    nested dicts are taken as they are (so label keys such as `nvidia.com/gpu.present` stay whole)."""
    values: dict[str, Any] = {}
    for path in values_files:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        _merge(values, loaded)
    for key, value in (set_values or {}).items():
        *parents, leaf = key.split(".")
        target = values
        for part in parents:
            target = target.setdefault(part, {})
        if isinstance(value, dict) and isinstance(target.get(leaf), dict):
            _merge(target[leaf], value)
        else:
            target[leaf] = copy.deepcopy(value)
    return values


def _merge(base: dict[str, Any], override: dict[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def render_chart_files(
    *values_files: Path | str,
    set_values: dict[str, Any] | None = None,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included), as Helm renders an install. Values are checked
    against values.schema.json first: bad values raise helm_python.HelmValuesError with Helm's message."""
    import helm_python as helm

    values = load_values(*values_files, set_values=set_values)
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(values=values, name=release, namespace=namespace, is_install=True)


def render_chart(
    *values_files: Path | str,
    set_values: dict[str, Any] | None = None,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """Every object the chart renders, hooks and `helm test` pods included (filter with `is_hook`,
    `is_test` or `installed`). NOTES.txt is left out (see `render_notes`)."""
    files = render_chart_files(*values_files, set_values=set_values, release=release, namespace=namespace)
    objects = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def render_notes(*values_files: Path | str, set_values: dict[str, Any] | None = None) -> str:
    files = render_chart_files(*values_files, set_values=set_values)
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def lint_chart(*values_files: Path | str, set_values: dict[str, Any] | None = None) -> dict[str, Any]:
    """`helm lint --strict` with these values. Returns {"messages": [{"severity", "path", "error"}],
    "errors": [...]}; severity 2 is a warning, 3 an error."""
    import helm_python as helm

    return helm.lint(CHART_DIR, load_values(*values_files, set_values=set_values), strict=True)


def hook(obj: dict[str, Any]) -> str | None:
    """The object's `helm.sh/hook` annotation (e.g. "pre-install", "test"), or None."""
    return ((obj.get("metadata") or {}).get("annotations") or {}).get("helm.sh/hook")


def is_hook(obj: dict[str, Any]) -> bool:
    return hook(obj) is not None


def is_test(obj: dict[str, Any]) -> bool:
    return "test" in (hook(obj) or "").split(",")


def installed(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `helm install` creates (install hooks included), without the `helm test` pods."""
    return [obj for obj in objects if not is_test(obj)]


# --- k8s/ and kustomize ---------------------------------------------------------------------------------


class KustomizeUnavailable(RuntimeError):
    """Neither kubectl (with its built-in kustomize) nor a kustomize binary is installed."""


def kustomize_command() -> list[str]:
    """`kubectl kustomize` ($SIDEFORMER_KUBECTL or kubectl on PATH), else `kustomize build`."""
    kubectl = os.environ.get("SIDEFORMER_KUBECTL") or shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    raise KustomizeUnavailable(
        "rendering k8s/overlays needs kubectl (>= 1.27, kustomize v5 built in) or kustomize v5 on PATH, "
        "or SIDEFORMER_KUBECTL naming a kubectl binary"
    )


def render_kustomize(overlay: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize k8s/overlays/<overlay>` renders (OVERLAYS: a PyTorchJob;
    TRAINJOB_OVERLAYS: a TrainingRuntime and a TrainJob), in the order kubectl applies them."""
    if overlay not in (*OVERLAYS, *TRAINJOB_OVERLAYS):
        raise ValueError(f"overlay {overlay!r}: expected one of {(*OVERLAYS, *TRAINJOB_OVERLAYS)}")
    result = subprocess.run(
        [*kustomize_command(), str(K8S_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kustomize failed for k8s/overlays/{overlay}:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load_k8s_final() -> list[dict[str, Any]]:
    """The objects of k8s/final-pytorchjob.yaml, as `kubectl apply -f` reads them."""
    return [doc for doc in yaml.safe_load_all(K8S_FINAL.read_text()) if doc]


# --- reading objects ------------------------------------------------------------------------------------


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    if len(found) != 1:
        names = [o["metadata"]["name"] for o in find(objects, kind)]
        raise LookupError(f"expected one {kind} named {name or '(any)'}; found {names}")
    return found[0]


def component(objects: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Objects labelled app.kubernetes.io/component=<name> (tune-worker, database, dashboard, ...)."""
    return [
        o for o in objects if ((o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == name)
    ]


def secret_data(objects: list[dict[str, Any]], name: str) -> dict[str, str] | None:
    """The decoded data of the Secret `name` (data and stringData), or None when nothing renders it."""
    found = find(objects, "Secret", name)
    if not found:
        return None
    data = {k: base64.b64decode(v).decode() for k, v in (found[0].get("data") or {}).items()}
    return {**data, **(found[0].get("stringData") or {})}


def config_map_data(objects: list[dict[str, Any]], name: str) -> dict[str, str] | None:
    """The data of the ConfigMap `name` (data and binaryData), or None when nothing renders it."""
    found = find(objects, "ConfigMap", name)
    if not found:
        return None
    binary = {k: base64.b64decode(v).decode() for k, v in (found[0].get("binaryData") or {}).items()}
    return {**(found[0].get("data") or {}), **binary}


def pytorchjob_pod(job: dict[str, Any], replica: str) -> dict[str, Any]:
    """The pod spec of a PyTorchJob replica ("Master" or "Worker")."""
    specs = job["spec"]["pytorchReplicaSpecs"]
    if replica not in specs:
        raise KeyError(
            f"PyTorchJob {job['metadata']['name']} has no {replica} replicas (has {sorted(specs)})"
        )
    return specs[replica]["template"]["spec"]


def pod_spec(obj: dict[str, Any], replica: str = "Master") -> dict[str, Any]:
    """The pod spec of a Pod, a workload (Job, Deployment, StatefulSet) or a PyTorchJob replica."""
    kind = obj["kind"]
    if kind == "PyTorchJob":
        return pytorchjob_pod(obj, replica)
    if kind == "Pod":
        return obj["spec"]
    return obj["spec"]["template"]["spec"]


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec an object carries (all replicas of a PyTorchJob, every replicated job of a Trainer
    v2 runtime). A TrainJob carries none of its own: its pods are its runtime's (tests/e2e/trainjobs.py)."""
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    if obj["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
        return [
            r["template"]["spec"]["template"]["spec"]
            for r in obj["spec"]["template"]["spec"]["replicatedJobs"]
        ]
    if obj["kind"] in ("Pod", "Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        return [pod_spec(obj)]
    return []


def container(pod: dict[str, Any], name: str = "pytorch") -> dict[str, Any]:
    """A container (or init container) of a pod spec, by name."""
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        if c["name"] == name:
            return c
    names = [c["name"] for c in [*pod.get("initContainers", []), *pod["containers"]]]
    raise KeyError(f"no container {name!r} (containers: {names})")


class SecretRef(NamedTuple):
    name: str
    key: str
    optional: bool


class Mount(NamedTuple):
    volume: str
    """The pod volume's name."""
    read_only: bool
    sub_path: str | None
    source: dict[str, Any]
    """The pod volume's source, e.g. {"persistentVolumeClaim": {...}} or {"emptyDir": {}}."""


class RunSpec(NamedTuple):
    """What a container runs: `args` after the image's ENTRYPOINT (`sideformer`), the plain environment,
    the environment taken from Secrets, and the mounts by path. Unpacks as a 4-tuple."""

    args: list[str]
    env: dict[str, str]
    secret_env: dict[str, SecretRef]
    volume_mounts: dict[str, Mount]


def run_spec(obj: dict[str, Any], replica: str = "Master", container_name: str = "pytorch") -> RunSpec:
    """The command line, environment and mounts of a container: by default container `pytorch` of a
    PyTorchJob's Master. Works for any pod-carrying object and any (init) container name."""
    pod = pod_spec(obj, replica)
    c = container(pod, container_name)
    if "command" in c and container_name == "pytorch":
        raise ValueError("a training container sets only args: the image's ENTRYPOINT is `sideformer`")
    env: dict[str, str] = {}
    secret_env: dict[str, SecretRef] = {}
    for var in c.get("env", []):
        value_from = var.get("valueFrom") or {}
        if ref := value_from.get("secretKeyRef"):
            secret_env[var["name"]] = SecretRef(ref["name"], ref["key"], bool(ref.get("optional", False)))
        elif "value" in var:
            env[var["name"]] = str(var["value"])
        elif field := value_from.get("fieldRef"):
            env[var["name"]] = f"<fieldRef {field['fieldPath']}>"  # the pod's own, resolved by the kubelet
        else:
            raise ValueError(f"env {var['name']}: only plain values, fieldRef and secretKeyRef are used here")
    volumes = {v["name"]: {k: val for k, val in v.items() if k != "name"} for v in pod.get("volumes", [])}
    mounts = {
        m["mountPath"]: Mount(m["name"], bool(m.get("readOnly", False)), m.get("subPath"), volumes[m["name"]])
        for m in c.get("volumeMounts", [])
    }
    return RunSpec([str(a) for a in c.get("args", [])], env, secret_env, mounts)


def config_text(objects: list[dict[str, Any]], name: str | None = None) -> str:
    """The SideFormer config file (key config.yaml) of the ConfigMap `name`, or of the only ConfigMap
    holding one. Pods mount it at /etc/sideformer; k8s/ mounts the chart's (sideformer-tune-config)."""
    maps = [m for m in find(objects, "ConfigMap", name) if "config.yaml" in (m.get("data") or {})]
    if len(maps) != 1:
        raise LookupError(
            f"expected one ConfigMap with config.yaml, found {[m['metadata']['name'] for m in maps]}"
        )
    return maps[0]["data"]["config.yaml"]


def operator_env(job: dict[str, Any], replica: str = "Master", index: int = 0) -> dict[str, str]:
    """The variables the Training Operator v1.9 sets in pod `<job>-<replica>-<index>` of a PyTorchJob with
    an integer nprocPerNode: RANK is the node rank (Master 0, Worker i -> i + 1), WORLD_SIZE counts
    processes, PET_* are what torchrun reads."""
    specs = job["spec"]["pytorchReplicaSpecs"]
    nproc = job["spec"].get("nprocPerNode", "auto")
    if not str(nproc).isdigit():
        raise ValueError(f"nprocPerNode {nproc!r}: the manifests here always use an integer (quoted)")
    nodes = sum(int(spec.get("replicas", 1)) for spec in specs.values())
    rank = 0 if replica == "Master" else index + 1
    master = f"{job['metadata']['name']}-master-0"
    return {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(OPERATOR_MASTER_PORT),
        "RANK": str(rank),
        "WORLD_SIZE": str(nodes * int(nproc)),
        "PET_NODE_RANK": str(rank),
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_MASTER_ADDR": master,
        "PET_MASTER_PORT": str(OPERATOR_MASTER_PORT),
        "PYTHONUNBUFFERED": "0",  # the operator's value (any non-empty value unbuffers Python)
        **(elastic_env(job) if "elasticPolicy" in job["spec"] else {"PET_NNODES": str(nodes)}),
    }


def elastic_env(job: dict[str, Any]) -> dict[str, str]:
    """What the Training Operator v1.9 adds for a PyTorchJob's elasticPolicy (kubeflow/trainer v1.9,
    pkg/controller.v1/pytorch/elastic.go, after the defaults of pytorchjob_defaults.go): the rendezvous
    endpoint (rdzvHost, else `<job>-worker-0`; rdzvPort, else the Worker's port), the backend (c10d unless
    given), PET_NNODES as "min:max" (the defaults: both the Worker replicas, the Master not counted) in
    place of the plain node count, and the optional fields only when set."""
    policy, name = job["spec"]["elasticPolicy"], job["metadata"]["name"]
    workers = int(job["spec"]["pytorchReplicaSpecs"].get("Worker", {}).get("replicas", 1))
    low = policy.get("minReplicas", policy.get("maxReplicas", workers))
    high = policy.get("maxReplicas", low)
    env = {
        "PET_RDZV_ENDPOINT": f"{policy.get('rdzvHost', f'{name}-worker-0')}:"
        f"{policy.get('rdzvPort', OPERATOR_MASTER_PORT)}",
        "PET_RDZV_BACKEND": policy.get("rdzvBackend", "c10d"),
        "PET_NNODES": f"{low}:{high}",
    }
    optional = {
        "maxRestarts": "PET_MAX_RESTARTS",
        "nProcPerNode": "PET_N_PROC_PER_NODE",
        "rdzvId": "PET_RDZV_ID",
    }
    env |= {var: str(policy[key]) for key, var in optional.items() if key in policy}
    if policy.get("rdzvConf"):
        env["PET_RDZV_CONF"] = ",".join(f"{c['key']}={c['value']}" for c in policy["rdzvConf"])
    if policy.get("standalone"):
        env["PET_STANDALONE"] = ""
    return env


OPERATOR_INIT_TEMPLATE = REPO / "k8s" / "operator" / "restricted-init-container" / "initContainer.yaml"


def operator_init_containers(job: dict[str, Any], replica: str) -> list[dict[str, Any]]:
    """`init-pytorch`, which the operator appends to the init containers of Worker pods: it waits until the
    Master's Service name resolves (exit 1 after OPERATOR_INIT_MAX_TRIES tries, 2 s apart). From the
    template the operator is given by k8s/operator/restricted-init-container (its built-in one plus a
    restricted securityContext), with the Go template fields filled in as the operator fills them."""
    if replica != "Worker" or "Master" not in job["spec"]["pytorchReplicaSpecs"]:
        return []
    fields = {
        "{{.InitContainerImage}}": OPERATOR_INIT_IMAGE,
        "{{.MaxTries}}": str(OPERATOR_INIT_MAX_TRIES),
        "{{.MasterAddr}}": f"{job['metadata']['name']}-master-0",
    }
    text = OPERATOR_INIT_TEMPLATE.read_text()
    for field, value in fields.items():
        text = text.replace(field, value)
    return yaml.safe_load(text)


def operator_pod_spec(job: dict[str, Any], replica: str, index: int) -> dict[str, Any]:
    """The spec of pod `<job>-<replica>-<index>` as the operator creates it: the template's, with
    `init-pytorch` appended to Worker pods, its variables added to every main container, and the replica's
    restartPolicy (ExitCode becomes Never: the operator itself decides on restarts by exit code)."""
    spec = copy.deepcopy(pytorchjob_pod(job, replica))
    spec["initContainers"] = [*spec.get("initContainers", []), *operator_init_containers(job, replica)]
    env = [{"name": k, "value": v} for k, v in operator_env(job, replica, index).items()]
    for c in spec["containers"]:
        c["env"] = [*c.get("env", []), *env]
    policy = job["spec"]["pytorchReplicaSpecs"][replica].get("restartPolicy", "Never")
    spec["restartPolicy"] = "Never" if policy == "ExitCode" else policy
    return spec


def torchrun_launch_config(env: dict[str, str]) -> Any:
    """The LaunchConfig torchrun builds in a pod with `env` (its PET_* defaults are read from the process
    environment when the parser is made), for the command sideformer's launcher runs there."""
    from torch.distributed import run

    from sideformer.launch import elastic_rendezvous

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        nproc = env.get("PET_NPROC_PER_NODE", "1")
        args = run.parse_args([*elastic_rendezvous(), "--nproc-per-node", nproc, "-m", "sideformer"])
        config, _, _ = run.config_from_args(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return config
