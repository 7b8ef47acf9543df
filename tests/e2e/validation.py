"""Validation of rendered Kubernetes objects with real schemas, plus the rules no schema states.

- Core kinds: kubernetes-validate in strict mode (unknown fields are errors) for Kubernetes `K8S_VERSION`.
- PyTorchJob: the Training Operator v1.9.4 CRD from the shared schema folder, turned into a JSON Schema
  the way kubeconform's openapi2jsonschema does (`additionalProperties: false` wherever `properties` are
  listed), then the operator's own rules (one Master, container `pytorch`, Master/Worker only, a valid
  restartPolicy), and each replica's pod template validated strictly as a core Pod.
- TrainJob and TrainingRuntime (Kubeflow Trainer v2.3.0): the same way against the v2.3.0 CRDs
  (tests/e2e/trainjobs.py), then the torch plugin's own rules (no reserved PET_* in trainer.env, a
  container named `node`, an explicit numProcPerNode), and the pod each TrainJob gets validated strictly.
- Pod security: non-root, no privilege escalation, all capabilities dropped, read-only root filesystem,
  secrets only through secretKeyRef.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

import jsonschema
import yaml

from tests.e2e import trainjobs
from tests.e2e.manifests import pod_specs, schemas_dir

K8S_VERSION = "1.33"
CRD_FILE = "kubeflow.org_pytorchjobs.yaml"
REPLICA_TYPES = {"Master", "Worker"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}
CLEAN_POD_POLICIES = {"All", "Running", "None"}
# Environment variables whose plain values would be credentials.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|OPTUNA_STORAGE|CREDENTIAL", re.IGNORECASE)


def strict_crd_schema(openapi: dict[str, Any]) -> dict[str, Any]:
    """An openAPIV3Schema as a JSON Schema that rejects unknown fields (openapi2jsonschema --strict)."""
    schema = copy.deepcopy(openapi)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@functools.cache
def pytorchjob_validator() -> jsonschema.Draft7Validator:
    path = schemas_dir() / CRD_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the PyTorchJob CRD is missing; set SIDEFORMER_SCHEMAS to the folder holding {CRD_FILE}"
        )
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict_crd_schema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def operator_rule_errors(job: dict[str, Any]) -> list[str]:
    """What the Training Operator v1.9 rejects or mishandles although the CRD schema accepts it."""
    errors = []
    spec = job["spec"]
    replicas = spec.get("pytorchReplicaSpecs") or {}
    unknown = set(replicas) - REPLICA_TYPES
    if unknown:
        errors.append(f"replica types {sorted(unknown)}: only Master and Worker")
    master = replicas.get("Master")
    if master is None or master.get("replicas", 1) != 1:
        errors.append("exactly one Master replica is required")
    for rtype, rspec in replicas.items():
        if rspec.get("restartPolicy", "Never") not in RESTART_POLICIES:
            errors.append(
                f"{rtype}: restartPolicy {rspec.get('restartPolicy')!r} not in {sorted(RESTART_POLICIES)}"
            )
        names = [c["name"] for c in rspec["template"]["spec"]["containers"]]
        if "pytorch" not in names:
            errors.append(f"{rtype}: no container named 'pytorch' (containers: {names})")
    nproc = spec.get("nprocPerNode")
    if nproc is not None and not (
        isinstance(nproc, str) and (nproc.isdigit() or nproc in ("auto", "cpu", "gpu"))
    ):
        errors.append(f"nprocPerNode {nproc!r}: a quoted integer (or auto/cpu/gpu)")
    if isinstance(nproc, str) and nproc.isdigit() and int(nproc) < 1:
        errors.append("nprocPerNode must be at least 1")
    policy = (spec.get("runPolicy") or {}).get("cleanPodPolicy")
    if policy is not None and policy not in CLEAN_POD_POLICIES:
        errors.append(f"cleanPodPolicy {policy!r} not in {sorted(CLEAN_POD_POLICIES)}")
    return errors


def validate_object(obj: dict[str, Any], objects: list[dict[str, Any]] = ()) -> None:
    """Raise AssertionError naming the object and the first problem found. A TrainJob's runtime is looked
    up in `objects` (the other objects rendered with it), else it must be the stock torch-distributed."""
    what = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    if obj.get("kind") in ("TrainJob", *trainjobs.RUNTIME_KINDS):
        assert obj["apiVersion"] == trainjobs.API_VERSION, f"{what}: apiVersion {obj['apiVersion']}"
        crd = trainjobs.TRAINJOB_CRD if obj["kind"] == "TrainJob" else trainjobs.RUNTIME_CRD
        errors = sorted(trainjobs.crd_validator(crd).iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, f"{what}: {errors[0].json_path}: {errors[0].message}"
        if obj["kind"] == "TrainJob":
            runtime = trainjobs.runtime_of(obj, list(objects))
            rules = trainjobs.torch_rule_errors(obj, runtime)
            assert not rules, f"{what}: {'; '.join(rules)}"
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}
            _validate_core({**pod, "spec": trainjobs.trainjob_pod(obj, list(objects))}, f"{what} pod")
        else:
            for spec in pod_specs(obj):
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec}
                _validate_core(pod, f"{what} pod template")
        return
    if obj.get("kind") == "PyTorchJob":
        assert obj["apiVersion"] == "kubeflow.org/v1", f"{what}: apiVersion {obj['apiVersion']}"
        errors = sorted(pytorchjob_validator().iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, f"{what}: {errors[0].json_path}: {errors[0].message}"
        rules = operator_rule_errors(obj)
        assert not rules, f"{what}: {'; '.join(rules)}"
        for rtype, rspec in obj["spec"]["pytorchReplicaSpecs"].items():
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, **rspec["template"]}
            _validate_core(pod, f"{what} {rtype} pod template")
        return
    _validate_core(obj, what)


def _validate_core(obj: dict[str, Any], what: str) -> None:
    errors = sorted(
        core_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj), key=lambda e: list(e.path)
    )
    if errors:
        path = ".".join(str(p) for p in errors[0].path)
        raise AssertionError(f"{what}: {path}: {errors[0].message}")


@functools.cache
def core_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    """kubernetes-validate's strict schema for a core kind, built once (kubernetes_validate.validate reads
    its schema files again on every call; this is the same lookup and the same validator, cached)."""
    from kubernetes_validate.utils import all_versions, schema_contents
    from referencing import Registry, Resource

    version = [v for v in all_versions() if v.startswith(K8S_VERSION + ".")][-1]
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    definitions = schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def pod_security_errors(obj: dict[str, Any], writable_root: set[str] = frozenset()) -> list[str]:
    """Security rules for every pod an object carries; `writable_root` names containers allowed a writable
    root filesystem."""
    errors = []
    for pod in pod_specs(obj):
        ctx = pod.get("securityContext") or {}
        if not ctx.get("runAsNonRoot") or not ctx.get("runAsUser"):
            errors.append("pod: runAsNonRoot with a non-zero runAsUser")
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            sc = c.get("securityContext") or {}
            name = c["name"]
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{name}: allowPrivilegeEscalation must be false")
            if sc.get("privileged"):
                errors.append(f"{name}: privileged")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                errors.append(f"{name}: capabilities must drop ALL")
            if (sc.get("capabilities") or {}).get("add"):
                errors.append(f"{name}: adds capabilities")
            if name not in writable_root and sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{name}: readOnlyRootFilesystem must be true")
            for var in c.get("env", []):
                is_path = var["name"].endswith("_FILE") and str(var.get("value", "")).startswith("/")
                if SECRET_NAME.search(var["name"]) and "valueFrom" not in var and not is_path:
                    errors.append(
                        f"{name}: {var['name']} is a plain value; secrets come through secretKeyRef"
                    )
                source = var.get("valueFrom") or {}
                if source and set(source) - {
                    "secretKeyRef",
                    "fieldRef",
                    "resourceFieldRef",
                    "configMapKeyRef",
                }:
                    errors.append(f"{name}: {var['name']} has an unexpected source {sorted(source)}")
            if c.get("envFrom"):
                errors.append(f"{name}: envFrom; name each secret key through secretKeyRef")
    return errors
