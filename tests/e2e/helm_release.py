"""Helm's release lifecycle (install, upgrade, test, uninstall) over the in-memory API server, with every
manifest rendered by Helm's own engine (helm-python-sdk), as Helm v4 documents it:

- Install: `pre-install` hooks, then the release's objects, then `post-install` hooks. Hooks run in order
  of `helm.sh/hook-weight`, then name; a hook's `helm.sh/hook-delete-policy` (default before-hook-creation)
  deletes the previous object of its name first and, with hook-succeeded, the hook itself once done (every
  hook is taken to succeed). An object that exists already stops the install before anything is made,
  unless its meta.helm.sh annotations name this release (Helm adopts it). Objects are created kind by
  kind in Helm's InstallOrder (kinds Helm does not know come last, alphabetically), each group before the
  next; a refused object does not stop the others, the release is failed and post-install hooks do not run.
- Upgrade: `pre-upgrade` hooks, then each rendered object created or updated (an existing object not of
  this release is refused unless its meta.helm.sh annotations name the release: Helm's adoption rule),
  then the objects of the previous revision no longer rendered deleted unless `helm.sh/resource-policy:
  keep`; the first refused write stops the upgrade and fails the release. Then `post-upgrade` hooks.
- Uninstall: the release's objects deleted in reverse order, except `keep`. Hook objects are not part of
  the release: Helm leaves them where they are ("Hook resources are not managed with corresponding
  releases", helm.sh/docs/topics/charts_hooks).
- `helm test`: the `test` hooks, with their delete policies.

`lookup` is answered from the model's objects: the engine renders offline (lookup returns nothing), so a
copy of the chart is rendered in which each `(lookup A K NS NAME)` call reads a generated template that
holds the model's objects as JSON. Without that, every upgrade would render new generated passwords where a
real `helm upgrade` keeps them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e import manifests as m
from tests.e2e.apiserver import CLUSTER_SCOPED, ApiError, ApiServer, Key

INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding",
    "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]  # fmt: skip
RELEASE_NAME = "meta.helm.sh/release-name"
RELEASE_NAMESPACE = "meta.helm.sh/release-namespace"
KEEP = "helm.sh/resource-policy"


def kind_rank(kind: str) -> tuple[int, str]:
    return (INSTALL_ORDER.index(kind), "") if kind in INSTALL_ORDER else (len(INSTALL_ORDER), kind)


def annotations(obj: dict[str, Any]) -> dict[str, str]:
    return obj["metadata"].get("annotations") or {}


def hook_events(obj: dict[str, Any]) -> list[str]:
    return [e.strip() for e in (m.hook(obj) or "").split(",") if e.strip()]


def delete_policies(obj: dict[str, Any]) -> list[str]:
    text = annotations(obj).get("helm.sh/hook-delete-policy", "")
    return [p.strip() for p in text.split(",") if p.strip()] or ["before-hook-creation"]


def is_kept(obj: dict[str, Any]) -> bool:
    return annotations(obj).get(KEEP) == "keep"


def weight(obj: dict[str, Any]) -> int:
    return int(annotations(obj).get("helm.sh/hook-weight", "0"))


# --- rendering -------------------------------------------------------------------------------------------

LOOKUP_CALL = "(lookup "
LOOKUP_TEMPLATE = "sideformer-day2.lookup"


def _matching_paren(text: str, start: int) -> int:
    """Index of the `)` closing the `(` at `start`, skipping Go template string literals."""
    depth, i = 0, start
    while i < len(text):
        ch = text[i]
        if ch in '"`':
            end = text.index(ch, i + 1) if ch == "`" else re.compile(r'(?<!\\)"').search(text, i + 1).start()
            i = end + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced parentheses around a lookup call")


def _rewrite_lookups(text: str) -> str:
    while (start := text.find(LOOKUP_CALL)) >= 0:
        end = _matching_paren(text, start)
        args = text[start + len(LOOKUP_CALL) : end]
        text = f'{text[:start]}(include "{LOOKUP_TEMPLATE}" (list {args}) | fromJson){text[end + 1 :]}'
    if re.search(r"\blookup\b\s", text):
        raise ValueError("a lookup call not in parentheses: the day-2 model reads only `(lookup ...)`")
    return text


def _lookup_template(objects: Iterable[dict[str, Any]], namespace: str) -> str:
    """A named template answering (list apiVersion kind namespace name) with the object as JSON, or {}."""
    lines = [f'{{{{- define "{LOOKUP_TEMPLATE}" -}}}}']
    first = True
    for obj in objects:
        ns = obj["metadata"].get("namespace", namespace)
        cond = " ".join(
            f"(eq (index . {i}) {json.dumps(v)})"
            for i, v in enumerate((obj["apiVersion"], obj["kind"], ns, obj["metadata"]["name"]))
        )
        lines.append(
            f"{{{{- {'if' if first else 'else if'} and {cond} -}}}}{{{{ {json.dumps(json.dumps(obj))} }}}}"
        )
        first = False
    lines.append("{{- else -}}{}{{- end -}}" if not first else "{}")
    lines.append("{{- end -}}")
    return "\n".join(lines) + "\n"


def chart_path() -> Path:
    """The chart the day-2 flows render: $SIDEFORMER_DAY2_CHART (e.g. another branch's checkout, to run
    these flows against it), else the repository's."""
    return Path(os.environ.get("SIDEFORMER_DAY2_CHART") or m.CHART_DIR)


def render(
    values: dict[str, Any],
    release: str,
    namespace: str = m.NAMESPACE,
    *,
    revision: int = 1,
    upgrade: bool = False,
    cluster: ApiServer | None = None,
    chart: Path | None = None,
) -> list[dict[str, Any]]:
    """Every object the chart (default `chart_path()`) renders (hooks and tests included, NOTES.txt left
    out) for `helm install` (revision 1) or `helm upgrade`; with `cluster`, `lookup` answers from its
    objects."""
    import helm_python as helm

    source = chart or chart_path()
    chart_dir = source
    with tempfile.TemporaryDirectory() as tmp:
        if cluster is not None:
            chart_dir = Path(tmp) / source.name
            shutil.copytree(source, chart_dir)
            for path in (chart_dir / "templates").rglob("*"):
                if path.is_file() and LOOKUP_CALL in path.read_text():
                    path.write_text(_rewrite_lookups(path.read_text()))
            (chart_dir / "templates" / "_sideformer_day2_lookup.tpl").write_text(
                _lookup_template(cluster, namespace)
            )
        with helm.Chart.load(chart_dir) as chart:
            files = chart.render(
                values=values,
                name=release,
                namespace=namespace,
                revision=revision,
                is_install=not upgrade,
                is_upgrade=upgrade,
            )
    objects = []
    for path, text in sorted(files.items()):
        if not path.endswith("NOTES.txt"):
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


# --- releases --------------------------------------------------------------------------------------------


@dataclass
class Event:
    """What one step did to one object."""

    key: Key
    what: str  # created, updated, unchanged, deleted, kept, hook ran, hook deleted, left behind, refused
    detail: str = ""


@dataclass
class StepReport:
    step: str
    release: str
    events: list[Event] = field(default_factory=list)
    errors: list[ApiError] = field(default_factory=list)

    def add(self, key: Key, what: str, detail: str = "") -> None:
        self.events.append(Event(key, what, detail))

    def keys(self, what: str) -> list[Key]:
        return [e.key for e in self.events if e.what == what]


@dataclass
class Release:
    name: str
    namespace: str
    revision: int
    manifest: list[dict[str, Any]]  # the regular (non-hook) objects of the last deployed revision
    status: str = "deployed"


class Helm:
    """`helm install/upgrade/test/uninstall -n NAMESPACE` against one ApiServer."""

    def __init__(self, cluster: ApiServer, namespace: str | None = None) -> None:
        self.cluster = cluster
        self.namespace = namespace or cluster.namespace
        self.releases: dict[str, Release] = {}

    def render(self, values: dict[str, Any], release: str, **options: Any) -> list[dict[str, Any]]:
        """The chart rendered into this namespace: Helm sets it on every namespaced object."""
        objects = render(values, release, self.namespace, cluster=self.cluster, **options)
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"].setdefault("namespace", self.namespace)
        return objects

    # the verbs

    def install(self, release: str, values: dict[str, Any], chart: Path | None = None) -> StepReport:
        report = StepReport("install", release)
        objects = self.render(values, release, chart=chart)
        regular = [o for o in objects if not m.is_hook(o)]
        try:
            for obj in regular:  # before anything is created: a foreign object stops the install
                self._check_ownership(obj, release, existing_release=None)
            self._hooks(objects, "pre-install", report)
            # Helm's Create goes kind group by kind group and tries every object, collecting the errors
            # (kube.Client.Create: perform/batchPerform): a refused object does not stop the later ones.
            for obj in self._ordered(regular):
                try:
                    self._create_or_adopt(obj, release, report, existing_release=None)
                except ApiError as error:
                    report.errors.append(error)
            if not report.errors:
                self._hooks(objects, "post-install", report)
        except ApiError as error:
            report.errors.append(error)
        self.releases[release] = Release(
            release, self.namespace, 1, regular, "failed" if report.errors else "deployed"
        )
        return report

    def upgrade(self, release: str, values: dict[str, Any], chart: Path | None = None) -> StepReport:
        report = StepReport("upgrade", release)
        current = self.releases[release]
        revision = current.revision + 1
        objects = self.render(values, release, revision=revision, upgrade=True, chart=chart)
        regular = [o for o in objects if not m.is_hook(o)]
        try:
            self._hooks(objects, "pre-upgrade", report)
            for obj in self._ordered(regular):
                self._create_or_adopt(obj, release, report, existing_release=current)
            rendered = {self.cluster.key(o) for o in regular}
            for obj in reversed(self._ordered(current.manifest)):
                key = self.cluster.key(obj)
                if key in rendered:
                    continue
                if is_kept(obj):
                    report.add(key, "kept", "resource-policy: keep")
                else:
                    report.add(key, self.cluster.delete(key))
            self._hooks(objects, "post-upgrade", report)
        except ApiError as error:
            report.errors.append(error)
        self.releases[release] = Release(
            release, self.namespace, revision, regular, "failed" if report.errors else "deployed"
        )
        return report

    def test(self, release: str, values: dict[str, Any]) -> StepReport:
        report = StepReport("test", release)
        current = self.releases[release]
        objects = self.render(values, release, revision=current.revision, upgrade=current.revision > 1)
        try:
            self._hooks(objects, "test", report)
        except ApiError as error:
            report.errors.append(error)
        return report

    def uninstall(self, release: str) -> StepReport:
        report = StepReport("uninstall", release)
        current = self.releases.pop(release)
        for obj in reversed(self._ordered(current.manifest)):
            key = self.cluster.key(obj)
            if is_kept(obj):
                report.add(key, "kept", "resource-policy: keep")
            else:
                report.add(key, self.cluster.delete(key))
        kept = set(report.keys("kept"))
        for obj in self.cluster:
            key = self.cluster.key(obj)
            if belongs(obj, release, self.namespace) and key not in kept:
                report.add(key, "left behind", "not part of the release (a hook?)")
        return report

    # the pieces

    def _ordered(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(objects, key=lambda o: kind_rank(o["kind"]))  # stable: file order within a kind

    def _hooks(self, objects: list[dict[str, Any]], event: str, report: StepReport) -> None:
        hooks = [o for o in objects if event in hook_events(o)]
        for obj in sorted(self._ordered(hooks), key=lambda o: (weight(o), o["metadata"]["name"])):
            key = self.cluster.key(obj)
            policies = delete_policies(obj)
            if "before-hook-creation" in policies and self.cluster.get(key) is not None:
                outcome = self.cluster.delete(key)
                report.add(key, "hook deleted" if outcome == "deleted" else outcome, "before-hook-creation")
            self.cluster.create(obj)
            report.add(key, "hook ran", event)
            if "hook-succeeded" in policies:
                self.cluster.delete(key)
                report.add(key, "hook deleted", "hook-succeeded")

    def _check_ownership(self, obj: dict[str, Any], release: str, existing_release: Release | None) -> None:
        """Helm's adoption rule: an object that exists but is not in the release's last manifest must carry
        meta.helm.sh annotations naming this release and namespace."""
        key = self.cluster.key(obj)
        live = self.cluster.get(key)
        if live is None or (
            existing_release is not None and key in {self.cluster.key(o) for o in existing_release.manifest}
        ):
            return
        owner = (annotations(live).get(RELEASE_NAME), annotations(live).get(RELEASE_NAMESPACE))
        if owner != (release, self.namespace):
            raise ApiError(
                "Conflict",
                key,
                "exists and cannot be imported into the current release: invalid ownership metadata "
                f"({RELEASE_NAME}/{RELEASE_NAMESPACE} {owner}, expected {(release, self.namespace)})",
            )

    def _create_or_adopt(
        self, obj: dict[str, Any], release: str, report: StepReport, existing_release: Release | None
    ) -> None:
        obj = _owned(obj, release, self.namespace)
        key = self.cluster.key(obj)
        live = self.cluster.get(key)
        ours = existing_release is not None and key in {
            self.cluster.key(o) for o in existing_release.manifest
        }
        if live is None:
            self.cluster.create(obj)
            report.add(key, "created")
            return
        self._check_ownership(obj, release, existing_release)
        changed = self.cluster.update(obj)
        report.add(key, ("updated" if changed else "unchanged") if ours else "adopted")


def _owned(obj: dict[str, Any], release: str, namespace: str) -> dict[str, Any]:
    meta = {**obj["metadata"]}
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        RELEASE_NAME: release,
        RELEASE_NAMESPACE: namespace,
    }
    return {**obj, "metadata": meta}


def belongs(obj: dict[str, Any], release: str, namespace: str) -> bool:
    """Whether an object is release `release` of `namespace`'s: by Helm's ownership annotations where it
    has them (regular objects), else by the chart's instance label and its namespace (hooks)."""
    notes = annotations(obj)
    if RELEASE_NAME in notes:
        return (notes[RELEASE_NAME], notes.get(RELEASE_NAMESPACE)) == (release, namespace)
    if (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") != release:
        return False
    return obj["kind"] in CLUSTER_SCOPED or obj["metadata"].get("namespace", namespace) == namespace
