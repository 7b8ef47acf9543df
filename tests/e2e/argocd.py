"""An Argo CD Application syncing the chart, over the in-memory API server, as Argo CD documents it
(argo-cd docs/user-guide/helm.md "Helm Hooks", resource_hooks.md, sync-waves.md):

- Every sync renders with `helm template` (the engine offline: `lookup` finds nothing, Release.Revision is
  1, Release.IsInstall true), release name = the Application's name. There is no install or upgrade:
  "every operation is a sync".
- Helm hooks become Argo CD hooks: pre-install and pre-upgrade -> PreSync, post-install and post-upgrade ->
  PostSync, pre-delete -> PreDelete, post-delete -> PostDelete; test hooks are not supported and skipped;
  helm.sh/hook-weight -> sync wave; hook-delete-policy before-hook-creation / hook-succeeded / hook-failed
  -> BeforeHookCreation / HookSucceeded / HookFailed, and with no policy BeforeHookCreation.
  `helm.sh/resource-policy: keep` -> `Delete=false` (never pruned nor deleted here).
- A sync: PreSync hooks, then every other rendered object applied in order of sync wave
  (`argocd.argoproj.io/sync-wave`, default 0; each wave finished before the next), kind, name
  (`kubectl apply`: created, or updated in place; an immutable field fails the sync), then PostSync hooks;
  with prune on, objects of the app no longer rendered are deleted. Hooks are not the app's resources:
  never pruned, left on app deletion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e import manifests as m
from tests.e2e.apiserver import ApiError, ApiServer, Key
from tests.e2e.helm_release import (
    StepReport,
    annotations,
    delete_policies,
    hook_events,
    is_kept,
    kind_rank,
    render,
    weight,
)

SYNC_WAVE = "argocd.argoproj.io/sync-wave"
HOOK_PHASES = {
    "pre-install": "PreSync",
    "pre-upgrade": "PreSync",
    "post-install": "PostSync",
    "post-upgrade": "PostSync",
    "pre-delete": "PreDelete",
    "post-delete": "PostDelete",
}
DELETE_POLICIES = {
    "before-hook-creation": "BeforeHookCreation",
    "hook-succeeded": "HookSucceeded",
    "hook-failed": "HookFailed",
}


def phases(obj: dict[str, Any]) -> set[str]:
    """The Argo CD phases of a Helm hook (empty: an unsupported hook, e.g. test, which Argo CD skips)."""
    return {HOOK_PHASES[e] for e in hook_events(obj) if e in HOOK_PHASES}


def wave(obj: dict[str, Any]) -> int:
    """The sync wave: argocd.argoproj.io/sync-wave, else a hook's helm.sh/hook-weight, else 0."""
    value = annotations(obj).get(SYNC_WAVE)
    return int(value) if value is not None else (weight(obj) if m.is_hook(obj) else 0)


def argo_delete_policies(obj: dict[str, Any]) -> set[str]:
    return {DELETE_POLICIES[p] for p in delete_policies(obj) if p in DELETE_POLICIES}


class Application:
    def __init__(self, name: str, cluster: ApiServer) -> None:
        self.name, self.cluster = name, cluster
        self.tracked: dict[Key, dict[str, Any]] = {}
        self.syncs = 0

    def render(self, values: dict[str, Any], chart: Path | None = None) -> list[dict[str, Any]]:
        # `helm template`: no cluster, revision 1
        return render(values, self.name, self.cluster.namespace, chart=chart)

    def sync(self, values: dict[str, Any], prune: bool = True, chart: Path | None = None) -> StepReport:
        self.syncs += 1
        report = StepReport(f"sync {self.syncs}", self.name)
        objects = self.render(values, chart)
        hooks = [o for o in objects if m.is_hook(o)]
        regular = [o for o in objects if not m.is_hook(o)]
        try:
            self._hooks(hooks, "PreSync", report)
            for obj in sorted(regular, key=lambda o: (wave(o), kind_rank(o["kind"]), o["metadata"]["name"])):
                key = self.cluster.key(obj)
                if self.cluster.get(key) is None:
                    self.cluster.create(obj)
                    report.add(key, "created")
                else:
                    report.add(key, "updated" if self.cluster.update(obj) else "unchanged")
            self._hooks(hooks, "PostSync", report)
            rendered = {self.cluster.key(o) for o in regular}
            if prune:
                for key, obj in sorted(
                    self.tracked.items(), key=lambda kv: kind_rank(kv[0].kind), reverse=True
                ):
                    if key in rendered:
                        continue
                    if is_kept(obj):
                        report.add(key, "kept", "Delete=false")
                    else:
                        report.add(key, self.cluster.delete(key), "pruned")
            self.tracked = {self.cluster.key(o): o for o in regular}
        except ApiError as error:
            report.errors.append(error)
        return report

    def delete(self, values: dict[str, Any]) -> StepReport:
        """Delete the Application (with the resources finalizer): PreDelete hooks, the app's resources but
        the kept ones, PostDelete hooks."""
        report = StepReport("delete app", self.name)
        hooks = [o for o in self.render(values) if m.is_hook(o)]
        try:
            self._hooks(hooks, "PreDelete", report)
            for key, obj in sorted(self.tracked.items(), key=lambda kv: kind_rank(kv[0].kind), reverse=True):
                if is_kept(obj):
                    report.add(key, "kept", "Delete=false")
                else:
                    report.add(key, self.cluster.delete(key))
            self._hooks(hooks, "PostDelete", report)
        except ApiError as error:
            report.errors.append(error)
        kept = set(report.keys("kept"))
        for obj in self.cluster:
            key = self.cluster.key(obj)
            labels = obj["metadata"].get("labels") or {}
            if labels.get("app.kubernetes.io/instance") == self.name and key not in kept:
                report.add(key, "left behind", "a hook: not one of the app's resources")
        self.tracked = {}
        return report

    def _hooks(self, hooks: list[dict[str, Any]], phase: str, report: StepReport) -> None:
        due = [o for o in hooks if phase in phases(o)]
        for obj in sorted(due, key=lambda o: (wave(o), kind_rank(o["kind"]), o["metadata"]["name"])):
            key = self.cluster.key(obj)
            policies = argo_delete_policies(obj) or {"BeforeHookCreation"}
            if self.cluster.get(key) is not None:
                if "BeforeHookCreation" in policies:
                    outcome = self.cluster.delete(key)
                    report.add(key, "hook deleted" if outcome == "deleted" else outcome, "BeforeHookCreation")
                else:  # Argo CD applies hooks: an existing one is updated in place
                    self.cluster.update(obj)
                    report.add(key, "hook ran", phase)
                    continue
            self.cluster.create(obj)
            report.add(key, "hook ran", phase)
            if "HookSucceeded" in policies:
                self.cluster.delete(key)
                report.add(key, "hook deleted", "HookSucceeded")
