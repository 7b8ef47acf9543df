"""A small in-memory Kubernetes API server: enough of its write semantics for Helm's and Argo CD's day 2.

Objects are keyed by (group, kind, namespace, name). What it enforces, each from its documented source:

- Custom resources (PyTorchJob, TrainJob, TrainingRuntime, ClusterTrainingRuntime): the CRD's own
  `x-kubernetes-validations` CEL rules, evaluated by cel-python on create and update, transition rules
  (`self == oldSelf`) included. As the API server does: a rule runs on the value at its schema node, only
  where that value is present; a transition rule only on update and where the old value is present too;
  list items are paired old-to-new only in `x-kubernetes-list-type: map` lists (by their keys), so a rule on
  items of any other list is not a transition rule there (KEP-2876, "Transition rules").
- Core kinds, the immutable fields of their API validation (k8s.io/kubernetes pkg/apis/*/validation):
  Job `spec.selector` and `spec.template`; StatefulSet every spec field but replicas, ordinals, template,
  updateStrategy, persistentVolumeClaimRetentionPolicy and minReadySeconds; Deployment `spec.selector`;
  Service `spec.clusterIP` (allocated at create, kept when a manifest leaves it out); PVC every spec field
  but `resources.requests` (storage may only grow); ConfigMap/Secret data once `immutable: true`; Pod spec
  but images.
- Kubeflow Trainer v2.3: its TrainJob webhook refuses a TrainJob whose runtime does not exist, and the
  `trainer.kubeflow.org/resource-in-use` finalizer keeps a (Cluster)TrainingRuntime that TrainJobs
  reference: deleting it leaves it terminating until the last of them goes, and creating it again meanwhile
  fails with AlreadyExists.

Controllers are not modelled (no pods, no status): what it answers is whether each write is accepted.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import yaml

from tests.e2e import manifests as m
from tests.e2e import trainjobs as tj


class Key(NamedTuple):
    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f" -n {self.namespace}" if self.namespace not in ("", m.NAMESPACE) else ""
        return f"{self.kind}/{self.name}{where}"


CLUSTER_SCOPED = {"ClusterTrainingRuntime", "Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass"}


def key_of(obj: dict[str, Any], namespace: str = m.NAMESPACE) -> Key:
    group = obj["apiVersion"].rpartition("/")[0]
    meta = obj["metadata"]
    ns = "" if obj["kind"] in CLUSTER_SCOPED else meta.get("namespace") or namespace
    return Key(group, obj["kind"], ns, meta["name"])


class ApiError(Exception):
    """A refused write, as the API server words it: `reason` is Invalid, AlreadyExists, NotFound or
    Forbidden."""

    def __init__(self, reason: str, key: Key, message: str) -> None:
        super().__init__(f"{reason}: {key}: {message}")
        self.reason, self.key, self.message = reason, key, message

    @property
    def immutable(self) -> bool:
        words = ("immutable", "Forbidden", "may not change")
        return self.reason == "Invalid" and any(w in self.message for w in words)


# --- CEL rules of the CRDs -------------------------------------------------------------------------------

CRD_FILES = {
    ("trainer.kubeflow.org", "TrainJob"): (tj.SCHEMA_DIR, tj.TRAINJOB_CRD, "v1alpha1"),
    # The namespaced TrainingRuntime has the ClusterTrainingRuntime's spec type (trainjobs.RUNTIME_CRD).
    ("trainer.kubeflow.org", "TrainingRuntime"): (tj.SCHEMA_DIR, tj.RUNTIME_CRD, "v1alpha1"),
    ("trainer.kubeflow.org", "ClusterTrainingRuntime"): (tj.SCHEMA_DIR, tj.RUNTIME_CRD, "v1alpha1"),
    ("kubeflow.org", "PyTorchJob"): ("", "kubeflow.org_pytorchjobs.yaml", "v1"),
}


@functools.cache
def crd_schema(group: str, kind: str) -> dict[str, Any] | None:
    if (group, kind) not in CRD_FILES:
        return None
    folder, name, version = CRD_FILES[(group, kind)]
    crd = yaml.safe_load((m.schemas_dir() / folder / name).read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


@functools.cache
def _cel_program(rule: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def _is_transition(rule: dict[str, Any]) -> bool:
    return "oldSelf" in rule["rule"]


_ABSENT = object()


def cel_errors(schema: dict[str, Any], new: Any, old: Any = _ABSENT, path: str = "") -> list[str]:
    """Messages of the x-kubernetes-validations rules `new` breaks (against `old` for transition rules),
    walking the schema as the API server does; each message is prefixed with the field path."""
    import celpy
    from celpy import celtypes

    errors = []
    for rule in schema.get("x-kubernetes-validations") or []:
        transition = _is_transition(rule)
        if transition and old is _ABSENT and not rule.get("optionalOldSelf"):
            continue
        activation = {"self": celpy.json_to_cel(new)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(None if old is _ABSENT else old)
        result = _cel_program(rule["rule"]).evaluate(activation)
        if not isinstance(result, (bool, celtypes.BoolType)):
            errors.append(f"{path or '<root>'}: rule {rule['rule']!r} could not be evaluated: {result}")
        elif not result:
            errors.append(f"{path or '<root>'}: Invalid value: {rule.get('message') or rule['rule']}")
    if isinstance(new, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for field, value in new.items():
            sub = props.get(field) or (extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            old_value = old.get(field, _ABSENT) if isinstance(old, dict) else _ABSENT
            errors += cel_errors(sub, value, old_value, f"{path}.{field}" if path else field)
    elif isinstance(new, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        keys = (
            schema.get("x-kubernetes-list-map-keys")
            if schema.get("x-kubernetes-list-type") == "map"
            else None
        )
        for index, value in enumerate(new):
            old_value = _ABSENT
            if keys and isinstance(old, list) and isinstance(value, dict):
                ident = [value.get(k) for k in keys]
                old_value = next(
                    (o for o in old if isinstance(o, dict) and [o.get(k) for k in keys] == ident), _ABSENT
                )
            errors += cel_errors(items, value, old_value, f"{path}[{index}]")
    return errors


# --- immutable fields of core kinds ----------------------------------------------------------------------

STATEFULSET_MUTABLE = {
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
}


def _quantity_bytes(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    text = str(text)
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def _without(spec: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in fields}


def _requested_storage(spec: dict[str, Any]) -> float:
    return _quantity_bytes(((spec.get("resources") or {}).get("requests") or {}).get("storage", 0))


def _without_images(spec: dict[str, Any]) -> dict[str, Any]:
    def blank(containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**c, "image": ""} for c in containers]

    return {
        **spec,
        "containers": blank(spec.get("containers", [])),
        "initContainers": blank(spec.get("initContainers", [])),
    }


def core_update_errors(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What the API server's update validation of a core kind refuses, in its words."""
    kind, before, after = new["kind"], old.get("spec") or {}, new.get("spec") or {}
    if kind == "Job":
        return [
            f"spec.{field}: Invalid value: field is immutable"
            for field in ("selector", "template", "completionMode")
            if before.get(field) != after.get(field)
        ]
    if kind == "StatefulSet":
        changed = sorted(
            f
            for f in set(before) | set(after)
            if f not in STATEFULSET_MUTABLE and before.get(f) != after.get(f)
        )
        if changed:
            return [
                "spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', "
                "'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' "
                f"are forbidden (changed: {', '.join(changed)})"
            ]
        return []
    if kind in ("Deployment", "DaemonSet", "ReplicaSet"):
        if before.get("selector") != after.get("selector"):
            return ["spec.selector: Invalid value: field is immutable"]
        return []
    if kind == "Service":
        if before.get("clusterIP") != after.get("clusterIP"):
            return [f"spec.clusterIPs[0]: Invalid value: {after.get('clusterIP')!r}: may not change once set"]
        return []
    if kind == "PersistentVolumeClaim":
        errors = []
        if _without(before, "resources", "volumeAttributesClassName") != _without(
            after, "resources", "volumeAttributesClassName"
        ):
            errors.append(
                "spec: Forbidden: spec is immutable after creation except resources.requests and "
                "volumeAttributesClassName for bound claims"
            )
        if _requested_storage(after) < _requested_storage(before):
            errors.append(
                "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
            )
        return errors
    if kind in ("ConfigMap", "Secret") and old.get("immutable"):
        fields = ("data", "binaryData", "stringData", "immutable")
        if any(old.get(f) != new.get(f) for f in fields):
            return ["data: Forbidden: field is immutable when `immutable` is set"]
        return []
    if kind == "Pod" and _without_images(before) != _without_images(after):
        return ["spec: Forbidden: pod updates may not change fields other than the images (and a few more)"]
    return []


# Fields the server fills in at create; a later manifest that leaves them out keeps them (Helm's three-way
# merge and `kubectl apply` both leave fields they never set alone).
SERVER_SET = {"Service": ("clusterIP", "clusterIPs"), "PersistentVolumeClaim": ("volumeName",)}


# --- the server ------------------------------------------------------------------------------------------

RUNTIME_IN_USE = "trainer.kubeflow.org/resource-in-use"


@dataclass
class Write:
    """One accepted or refused write, for the flows' tables."""

    verb: str  # create, update, delete
    key: Key
    outcome: str  # created, updated, unchanged, deleted, terminating, absent, refused
    error: ApiError | None = None


class ApiServer:
    def __init__(self, namespace: str = m.NAMESPACE, objects: Iterable[dict[str, Any]] = ()) -> None:
        self.namespace = namespace
        self.objects: dict[Key, dict[str, Any]] = {}
        self.terminating: set[Key] = set()
        self.log: list[Write] = []
        self._ips = itertools.count(10)
        for obj in objects:
            self.create(obj)
        self.preexisting = set(self.objects)  # what the cluster had before the flow (not the flow's doing)

    # reading

    def get(self, key: Key) -> dict[str, Any] | None:
        return self.objects.get(key)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self.objects.values()))

    def key(self, obj: dict[str, Any]) -> Key:
        return key_of(obj, self.namespace)

    # writing

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        key = self.key(obj)
        try:
            if key in self.objects:
                detail = " (object is being deleted)" if key in self.terminating else ""
                raise ApiError("AlreadyExists", key, f"already exists{detail}")
            stored = copy.deepcopy(obj)
            if key.namespace:
                stored["metadata"].setdefault("namespace", key.namespace)
            self._admit(key, stored, None)
            if obj["kind"] == "Service" and "clusterIP" not in stored.get("spec", {}):
                stored["spec"]["clusterIP"] = f"10.96.0.{next(self._ips)}"
            self.objects[key] = stored
        except ApiError as error:
            self.log.append(Write("create", key, "refused", error))
            raise
        self.log.append(Write("create", key, "created"))
        return stored

    def update(self, obj: dict[str, Any]) -> bool:
        """Replace the object's manifest fields (metadata labels/annotations, spec, data...), keeping what
        the server set; True when anything changed."""
        key = self.key(obj)
        try:
            old = self.objects.get(key)
            if old is None:
                raise ApiError("NotFound", key, "not found")
            new = copy.deepcopy(obj)
            new["metadata"] = {**old["metadata"], **new["metadata"]}
            for field in SERVER_SET.get(obj["kind"], ()):
                if field in (old.get("spec") or {}) and field not in (new.get("spec") or {}):
                    new["spec"][field] = old["spec"][field]
            self._admit(key, new, old)
        except ApiError as error:
            self.log.append(Write("update", key, "refused", error))
            raise
        changed = new != old
        self.objects[key] = new
        self.log.append(Write("update", key, "updated" if changed else "unchanged"))
        return changed

    def delete(self, key: Key) -> str:
        """Delete; returns deleted, terminating (a finalizer holds it) or absent."""
        if key not in self.objects:
            outcome = "absent"
        elif key.kind in tj.RUNTIME_KINDS and self._runtime_users(key):
            self.terminating.add(key)
            outcome = "terminating"
        else:
            del self.objects[key]
            self.terminating.discard(key)
            outcome = "deleted"
            self._release_finalizers()
        self.log.append(Write("delete", key, outcome))
        return outcome

    # admission

    def _admit(self, key: Key, new: dict[str, Any], old: dict[str, Any] | None) -> None:
        schema = crd_schema(key.group, key.kind)
        if schema is not None:
            errors = cel_errors(schema, new, _ABSENT if old is None else old)
            if errors:
                raise ApiError("Invalid", key, "; ".join(errors))
        elif old is not None:
            errors = core_update_errors(old, new)
            if errors:
                raise ApiError("Invalid", key, "; ".join(errors))
        if key.kind == "TrainJob" and old is None:
            ref = new["spec"]["runtimeRef"]
            kind = ref.get("kind", "ClusterTrainingRuntime")
            ns = "" if kind == "ClusterTrainingRuntime" else key.namespace
            if Key("trainer.kubeflow.org", kind, ns, ref["name"]) not in self.objects:
                raise ApiError("Forbidden", key, f"admission webhook: {kind} {ref['name']} not found")

    def _runtime_users(self, runtime: Key) -> list[Key]:
        users = []
        for key, obj in self.objects.items():
            if key.kind != "TrainJob":
                continue
            ref = obj["spec"]["runtimeRef"]
            kind = ref.get("kind", "ClusterTrainingRuntime")
            if (
                kind == runtime.kind
                and ref["name"] == runtime.name
                and (kind == "ClusterTrainingRuntime" or key.namespace == runtime.namespace)
            ):
                users.append(key)
        return users

    def _release_finalizers(self) -> None:
        for key in list(self.terminating):
            if not self._runtime_users(key):
                self.terminating.discard(key)
                self.objects.pop(key, None)
                self.log.append(Write("delete", key, "deleted"))
