"""Day-2 flows of the chart over the in-memory API server (tests/e2e/apiserver.py), with Helm's
(helm_release.py) and Argo CD's (argocd.py) documented behaviour, and the table each flow prints.

- `helm_flow(name)` (HELM_FLOWS: each backend, and TrainJobs on the Trainer's installed runtime): install
  -> helm test -> upgrade with another image tag and 2 nodes per trial -> upgrade switching tune.backend ->
  uninstall -> install again under the same name -> install under another name -> install the same name
  in another namespace -> uninstall all; `upgrade_from_flow`: a release of the previous chart upgraded.
- `argo_flow(backend)`: sync -> sync again with nothing changed -> sync with another image tag, 2 nodes per
  trial and another config -> delete the Application.

Planned leftovers are the objects marked `helm.sh/resource-policy: keep` (the output claim, the generated
database Secret); anything else a step leaves is unplanned: a hook object left by uninstall, an object of
the release that the current revision no longer renders (orphaned).
"""

from __future__ import annotations

import copy
import io
import subprocess
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e import manifests as m
from tests.e2e import trainjobs as tj
from tests.e2e.apiserver import ApiError, ApiServer, Key
from tests.e2e.argocd import Application
from tests.e2e.helm_release import Helm, StepReport, belongs, is_kept

BACKENDS = ("pytorchjob", "trainjob")
OTHER_RELEASE = "second"
NEXT_TAG = "cuda-next"
# Kinds whose controller never rolls running pods to a new spec: an in-place update of one leaves the
# running workers on the old image, arguments and node count (Training Operator v1.9 reconciles pods by
# name only).
NO_ROLLOUT = {"PyTorchJob"}


# Argo CD renders offline, where `lookup` finds no Secret to keep passwords from: the chart's gitOps switch
# takes the database credentials from a Secret the user made instead of generating them at each render.
GITOPS_SECRET_NAME = "sideformer-db-credentials"
GITOPS = {"gitOps": True, "postgresql.auth.existingSecret": GITOPS_SECRET_NAME}
GITOPS_SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": GITOPS_SECRET_NAME},
    "stringData": {
        "postgres-password": "a",
        "password": "b",
        "dashboard-password": "c",
        "storage-url": "postgresql+psycopg2://tuner:b@sideformer-tune-postgresql:5432/optuna",
        "dashboard-storage-url": "postgresql+psycopg2://viewer:c@sideformer-tune-postgresql:5432/optuna",
    },
}


def other(backend: str) -> str:
    return BACKENDS[1 - BACKENDS.index(backend)]


def values(backend: str, **changes: Any) -> dict[str, Any]:
    return m.load_values(set_values={"tune.backend": backend, **changes})


@dataclass
class FlowResult:
    name: str
    steps: list[StepReport] = field(default_factory=list)
    orphans: dict[str, list[Key]] = field(default_factory=dict)  # step -> orphaned objects after it
    final: list[Key] = field(default_factory=list)  # what the cluster holds at the end
    second_sync_changes: list[str] = field(default_factory=list)  # Argo CD: what a repeated sync changed

    @property
    def errors(self) -> list[ApiError]:
        return [e for s in self.steps for e in s.errors]

    @property
    def immutable_errors(self) -> list[ApiError]:
        return [e for e in self.errors if e.immutable]

    def unplanned(self) -> list[str]:
        """Objects left behind by an uninstall or app deletion but not marked keep, and objects orphaned
        after a step."""
        left = [f"{s.step} {s.release}: {k} left behind" for s in self.steps for k in s.keys("left behind")]
        left += [f"{step}: {k} orphaned" for step, keys in self.orphans.items() for k in keys]
        return left

    def stale_updates(self) -> list[str]:
        return [
            f"{s.step} {s.release}: {k}"
            for s in self.steps
            for k in s.keys("updated")
            if k.kind in NO_ROLLOUT
        ]

    def table(self) -> str:
        return format_table(self)


def _orphans(cluster: ApiServer, release: str, namespace: str, rendered: list[dict[str, Any]]) -> list[Key]:
    """Objects of `release` in the cluster that its current render holds neither as object nor as hook."""
    keys = {cluster.key(o) for o in rendered if not m.is_test(o)}
    return [
        cluster.key(o)
        for o in cluster
        if belongs(o, release, namespace) and cluster.key(o) not in keys and not is_kept(o)
    ]


HELM_FLOWS: dict[str, dict[str, Any]] = {
    "pytorchjob": {"tune.backend": "pytorchjob"},
    "trainjob": {"tune.backend": "trainjob"},
    # TrainJobs that reference the Trainer's own torch-distributed runtime and patch it (runtimePatches).
    "trainjob, installed runtime": {"tune.backend": "trainjob", "tune.trainJob.createRuntime": False},
}
OTHER_NAMESPACE = "team-b"


def helm_flow(name: str) -> FlowResult:
    """install -> helm test -> upgrade (image tag, 2 nodes) -> upgrade to the other backend -> uninstall ->
    install again -> install under another name -> install the same name in another namespace -> uninstall
    all. The cluster has the Trainer's stock torch-distributed ClusterTrainingRuntime, as an install of the
    Trainer does."""
    base = HELM_FLOWS[name]
    cluster = ApiServer(objects=[tj.torch_distributed_runtime()])
    helm, elsewhere = Helm(cluster), Helm(cluster, namespace=OTHER_NAMESPACE)
    flow = FlowResult(f"helm, {name}")
    first = m.load_values(set_values=base)
    changed = m.load_values(set_values={**base, "image.tag": NEXT_TAG, "tune.nodesPerTrial": 2})
    switched = values(other(base["tune.backend"]), **{"image.tag": NEXT_TAG, "tune.nodesPerTrial": 2})
    steps: list[tuple[Helm, str, str, dict[str, Any] | None]] = [
        (helm, "install", m.RELEASE, first),
        (helm, "test", m.RELEASE, first),
        (helm, "upgrade", m.RELEASE, changed),
        (helm, "upgrade", m.RELEASE, switched),
        (helm, "uninstall", m.RELEASE, None),
        (helm, "install", m.RELEASE, first),
        (helm, "install", OTHER_RELEASE, first),
        (elsewhere, "install", m.RELEASE, first),
        (helm, "uninstall", m.RELEASE, None),
        (helm, "uninstall", OTHER_RELEASE, None),
        (elsewhere, "uninstall", m.RELEASE, None),
    ]
    for client, verb, release, vals in steps:
        report = getattr(client, verb)(release, vals) if vals is not None else client.uninstall(release)
        where = "" if client is helm else f" -n {client.namespace}"
        report.step = f"{len(flow.steps) + 1}. {verb}{where}"
        flow.steps.append(report)
        if verb in ("install", "upgrade"):
            current = client.releases[release]
            rendered = client.render(vals, release, revision=current.revision, upgrade=current.revision > 1)
            if orphans := _orphans(cluster, release, client.namespace, rendered):
                flow.orphans[report.step] = orphans
    flow.final = sorted(k for k in cluster.objects if k not in cluster.preexisting)
    return flow


# The chart as main last released it before the day-2 fixes (Chart.yaml 0.1.0): installs that exist.
PREVIOUS_CHART_COMMIT = "7c44b7704c6c73e7c0a9d265246e3b70db1f9da0"


def previous_chart(folder: Path, commit: str = PREVIOUS_CHART_COMMIT) -> Path:
    """The chart at `commit`, extracted from the repository's history into `folder` (git archive)."""
    rel = m.CHART_DIR.relative_to(m.REPO)
    archive = subprocess.run(
        ["git", "-C", str(m.REPO), "archive", "--format=tar", commit, str(rel)],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder / rel


def upgrade_from_flow(backend: str, old_chart: Path) -> FlowResult:
    """install with an earlier chart -> upgrade to this one with the same values -> uninstall."""
    cluster = ApiServer()
    helm = Helm(cluster)
    flow = FlowResult(f"helm upgrade from the previous chart, tune.backend={backend}")
    vals = values(backend)
    for verb, kwargs in (("install", {"chart": old_chart}), ("upgrade", {})):
        report = getattr(helm, verb)(m.RELEASE, vals, **kwargs)
        report.step = f"{len(flow.steps) + 1}. {verb}"
        flow.steps.append(report)
    report = helm.uninstall(m.RELEASE)
    report.step = f"{len(flow.steps) + 1}. uninstall"
    flow.steps.append(report)
    flow.final = sorted(k for k in cluster.objects if k not in cluster.preexisting)
    return flow


def argo_upgrade_from_flow(backend: str, old_chart: Path) -> FlowResult:
    """An Application synced with chart 0.1.0, then with this chart after the steps its README asks of
    offline renders (no `lookup` keeps the immutable fields there): the StatefulSet deleted without its
    pod, the old claim's access mode set; then the Application deleted."""
    cluster = ApiServer(objects=[GITOPS_SECRET])
    app = Application(m.RELEASE, cluster)
    flow = FlowResult(f"Argo CD from the previous chart, tune.backend={backend}")
    old_values = values(backend, **{"postgresql.auth.existingSecret": GITOPS_SECRET_NAME})
    new_values = values(backend, **GITOPS, **{"output.pvc.accessModes": ["ReadWriteMany"]})
    report = app.sync(old_values, chart=old_chart)
    report.step = "1. sync (chart 0.1.0)"
    flow.steps.append(report)
    statefulset = next(k for k in cluster.objects if k.kind == "StatefulSet")
    cluster.delete(statefulset)  # kubectl delete statefulset --cascade=orphan: its pod stays
    report = app.sync(new_values)
    report.step = "2. sync (this chart)"
    flow.steps.append(report)
    report = app.delete(new_values)
    report.step = "3. delete app"
    flow.steps.append(report)
    flow.final = sorted(k for k in cluster.objects if k not in cluster.preexisting)
    return flow


ARGO_FLOWS: dict[str, dict[str, Any]] = {
    "pytorchjob": {"tune.backend": "pytorchjob"},
    "trainjob": {"tune.backend": "trainjob"},
    # A namespaced runtime (installers without cluster-scoped rights): ordered before its TrainJobs by waves.
    "trainjob, namespaced runtime": {
        "tune.backend": "trainjob",
        "tune.trainJob.runtimeKind": "TrainingRuntime",
    },
}


def argo_flow(name: str) -> FlowResult:
    """sync -> sync again, nothing changed -> sync another config, image tag and node count -> delete."""
    base = {**ARGO_FLOWS[name], **GITOPS}
    cluster = ApiServer(objects=[GITOPS_SECRET])  # made once by the user (Sealed/External Secrets)
    app = Application(m.RELEASE, cluster)
    flow = FlowResult(f"Argo CD, {name}")
    first = m.load_values(set_values=base)
    default_config = m.load_values(m.CHART_DIR / "values.yaml")["config"]
    config = default_config.replace("n_trials: 40", "n_trials: 60")
    assert config != default_config, "values.yaml's config no longer holds n_trials: 40"
    changed = m.load_values(
        set_values={**base, "image.tag": NEXT_TAG, "tune.nodesPerTrial": 2, "config": config}
    )
    snapshots = []
    for vals in (first, first, changed):
        report = app.sync(vals)
        report.step = f"{len(flow.steps) + 1}. {report.step}"
        flow.steps.append(report)
        snapshots.append(
            {k: (o, k in cluster.terminating) for k, o in copy.deepcopy(cluster.objects).items()}
        )
        if orphans := _orphans(cluster, app.name, cluster.namespace, app.render(vals)):
            flow.orphans[report.step] = orphans
    flow.second_sync_changes = _differences(snapshots[0], snapshots[1])
    report = app.delete(changed)
    report.step = f"{len(flow.steps) + 1}. {report.step}"
    flow.steps.append(report)
    flow.final = sorted(k for k in cluster.objects if k not in cluster.preexisting)
    return flow


def _differences(before: dict[Key, Any], after: dict[Key, Any]) -> list[str]:
    diffs = [f"{k} gone" for k in before if k not in after]
    diffs += [f"{k} new" for k in after if k not in before]
    diffs += [f"{k} changed" for k in before if k in after and before[k] != after[k]]
    return sorted(diffs)


# --- the table -------------------------------------------------------------------------------------------

COLUMNS = ("created", "updated", "replaced", "re-created hook", "deleted", "kept", "left behind", "refused")


def _stem(name: str) -> str:
    return name.rsplit("-", 1)[0]


def classify(report: StepReport) -> dict[str, list[str]]:
    """Events of a step in the table's columns: a deletion and a creation of the same kind and name stem
    (a revision- or hash-named object) is one replacement; a hook deleted and run again, a re-created hook."""
    rows: dict[str, list[str]] = defaultdict(list)
    created = [e.key for e in report.events if e.what in ("created", "adopted")]
    deleted = [e.key for e in report.events if e.what in ("deleted", "terminating")]
    hook_deleted = {e.key for e in report.events if e.what == "hook deleted" and e.detail != "hook-succeeded"}
    for e in report.events:
        if e.what == "hook ran":
            rows["re-created hook" if e.key in hook_deleted else "created"].append(f"{e.key} ({e.detail})")
    for key in created:
        twin = next((d for d in deleted if d.kind == key.kind and _stem(d.name) == _stem(key.name)), None)
        if twin is not None:
            rows["replaced"].append(f"{twin} -> {key.name}")
            deleted.remove(twin)
        else:
            rows["created"].append(str(key) + (" (adopted)" if key in report.keys("adopted") else ""))
    terminating = set(report.keys("terminating"))
    rows["deleted"] += [f"{k} (terminating)" if k in terminating else str(k) for k in deleted]
    rows["updated"] += [
        f"{k} (pods not rolled)" if k.kind in NO_ROLLOUT else str(k) for k in report.keys("updated")
    ]
    rows["kept"] += [str(k) for k in report.keys("kept")]
    rows["left behind"] += [str(k) for k in report.keys("left behind")]
    rows["refused"] += [f"{e.key}: {e.message}" for e in report.errors]
    return rows


def format_table(flow: FlowResult) -> str:
    lines = [f"== {flow.name}"]
    for report in flow.steps:
        rows = classify(report)
        unchanged = len(report.keys("unchanged"))
        lines.append(f"-- {report.step} {report.release} ({unchanged} unchanged)")
        for column in COLUMNS:
            for i, item in enumerate(rows.get(column, [])):
                lines.append(f"   {column if i == 0 else '':<16} {item}")
        for key in flow.orphans.get(report.step, []):
            lines.append(f"   {'ORPHANED':<16} {key}")
    lines.append(f"-- at the end the cluster holds: {', '.join(map(str, flow.final)) or 'nothing'}")
    return "\n".join(lines)
