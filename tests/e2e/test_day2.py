"""Day 2 of the chart, rehearsed without a cluster: Helm's release lifecycle and Argo CD syncs over an
in-memory API server that enforces the CRDs' own CEL rules and the core kinds' immutable fields, and every
pod of every configuration checked against the "restricted" Pod Security Standard. Each flow prints its
table (pytest -s, or on failure)."""

from __future__ import annotations

import copy
import functools
import os
import subprocess

import helm_python as helm
import pytest

from tests.e2e import day2
from tests.e2e import manifests as m
from tests.e2e import pod_security as pss
from tests.e2e.apiserver import ApiError, ApiServer, cel_errors, crd_schema
from tests.e2e.argocd import Application
from tests.e2e.helm_release import Helm, render

BACKENDS = day2.BACKENDS


def kept_only(flow: day2.FlowResult) -> list[str]:
    """What the cluster holds at the end that is not a kept claim or Secret (plus the user's own)."""
    return [
        str(k)
        for k in flow.final
        if (k.kind, k.name) != ("Secret", day2.GITOPS_SECRET_NAME)
        and k.kind not in ("PersistentVolumeClaim", "Secret")
    ]


# --- Helm: install, upgrade, switch backend, uninstall, reinstall ----------------------------------------


@functools.cache
def helm_flow_of(backend: str) -> day2.FlowResult:
    flow = day2.helm_flow(backend)
    print(flow.table())
    return flow


@pytest.fixture(params=list(day2.HELM_FLOWS))
def helm_flow(request) -> day2.FlowResult:
    return helm_flow_of(request.param)


def test_helm_upgrades_are_never_refused_as_immutable(helm_flow):
    assert not helm_flow.immutable_errors, [str(e) for e in helm_flow.immutable_errors]
    assert not helm_flow.errors, [str(e) for e in helm_flow.errors]


def test_helm_flow_leaves_nothing_behind_but_what_is_kept(helm_flow):
    assert not helm_flow.unplanned(), helm_flow.unplanned()
    assert not kept_only(helm_flow), kept_only(helm_flow)


def test_upgrading_the_image_and_node_count_replaces_the_trainjobs():
    """TrainJobs (and their runtime) cannot be patched: the upgrade replaces them by new names."""
    upgrade = helm_flow_of("trainjob").steps[2]
    rows = day2.classify(upgrade)
    assert any(r.startswith("TrainJob/") for r in rows["replaced"]), rows
    assert not [r for r in rows["updated"] if r.startswith("TrainJob/")], rows


def test_helm_keeps_the_generated_passwords_across_upgrades_and_reinstall():
    """`lookup` answers from the model's cluster, so the generated Secret keeps its passwords as a real
    `helm upgrade` keeps them; a reinstall over the kept Secret adopts it with the same passwords."""
    cluster = ApiServer()
    h = Helm(cluster)
    vals = day2.values("pytorchjob")
    h.install(m.RELEASE, vals)
    secret = next(o for o in cluster if o["kind"] == "Secret")
    before = copy.deepcopy(secret["data"])
    assert not h.upgrade(m.RELEASE, day2.values("pytorchjob", **{"image.tag": day2.NEXT_TAG})).errors
    h.uninstall(m.RELEASE)
    assert not h.install(m.RELEASE, vals).errors
    assert next(o for o in cluster if o["kind"] == "Secret")["data"] == before
    # while rendered offline (no cluster), every render draws new ones
    offline = [next(o for o in render(vals, m.RELEASE) if o["kind"] == "Secret")["data"] for _ in range(2)]
    assert offline[0] != offline[1]


@pytest.fixture(scope="module")
def previous_chart(tmp_path_factory):
    try:
        return day2.previous_chart(tmp_path_factory.mktemp("previous"))
    except (OSError, subprocess.CalledProcessError) as error:  # a copy of the sources without git history
        if os.environ.get("CI"):  # CI runs a clone with its history: there a missing chart is a failure
            raise
        pytest.skip(
            f"the previous chart ({day2.PREVIOUS_CHART_COMMIT[:12]}) is not in this checkout: {error}"
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_helm_upgrade_of_a_release_made_by_the_previous_chart(backend, previous_chart):
    """Releases installed with the chart as it was before (Chart.yaml 0.1.0) upgrade in place: no claim,
    StatefulSet or Service field the API server keeps immutable may change. What the old chart made as a
    hook (its TrainingRuntime) is not the release's, so only it may stay behind."""
    flow = day2.upgrade_from_flow(backend, previous_chart)
    print(flow.table())
    assert not flow.errors, [str(e) for e in flow.errors]
    old_hooks = {
        (o["kind"], o["metadata"]["name"])
        for o in render(day2.values(backend), m.RELEASE, chart=previous_chart)
        if m.is_hook(o) and not m.is_test(o)
    }
    left = [k for s in flow.steps for k in s.keys("left behind") if (k.kind, k.name) not in old_hooks]
    assert not left, left


@pytest.mark.parametrize("backend", BACKENDS)
def test_argo_sync_of_an_app_made_with_the_previous_chart_after_the_documented_steps(backend, previous_chart):
    flow = day2.argo_upgrade_from_flow(backend, previous_chart)
    print(flow.table())
    assert not flow.errors, [str(e) for e in flow.errors]
    old_hooks = {
        (o["kind"], o["metadata"]["name"])
        for o in render(day2.values(backend), m.RELEASE, chart=previous_chart)
        if m.is_hook(o) and not m.is_test(o)
    }
    left = [k for s in flow.steps for k in s.keys("left behind") if (k.kind, k.name) not in old_hooks]
    assert not left, left


# --- Argo CD: helm template, hooks as sync phases, two syncs ----------------------------------------------


@pytest.fixture(scope="module", params=list(day2.ARGO_FLOWS))
def argo_flow(request) -> day2.FlowResult:
    flow = day2.argo_flow(request.param)
    print(flow.table())
    return flow


def test_argo_second_sync_of_the_same_render_changes_nothing(argo_flow):
    first, second = argo_flow.steps[0], argo_flow.steps[1]
    assert not first.errors and not second.errors, [str(e) for e in first.errors + second.errors]
    assert not argo_flow.second_sync_changes, argo_flow.second_sync_changes
    # only short-lived work (Jobs, Pods) may run again at each sync
    rerun = [k for k in second.keys("hook ran") + second.keys("created") if k.kind not in ("Job", "Pod")]
    assert not rerun, rerun


def test_argo_sync_of_a_changed_config_image_and_node_count(argo_flow):
    change = argo_flow.steps[2]
    assert not change.errors, [str(e) for e in change.errors]
    assert not argo_flow.unplanned(), argo_flow.unplanned()
    assert not kept_only(argo_flow), kept_only(argo_flow)


def test_argo_without_gitops_draws_new_passwords_at_every_sync():
    """Why the Argo CD flows set gitOps: the same comparison catches what an offline render changes."""
    app = Application(m.RELEASE, ApiServer())
    vals = day2.values("pytorchjob")
    first = app.sync(vals)
    second = app.sync(vals)
    assert not first.errors and not second.errors
    assert [str(k) for k in second.keys("updated")] == ["Secret/sideformer-tune-db"]


def test_a_namespaced_runtime_needs_argo_waves_or_a_second_helm_upgrade():
    """As the chart documents tune.trainJob.runtimeKind=TrainingRuntime: Helm creates kinds it does not know
    alphabetically, TrainJob before TrainingRuntime, and the Trainer's webhook refuses a TrainJob whose
    runtime does not exist yet; the upgrade that follows finds the runtime there."""
    cluster = ApiServer()
    h = Helm(cluster)
    vals = day2.values("trainjob", **{"tune.trainJob.runtimeKind": "TrainingRuntime"})
    install = h.install(m.RELEASE, vals)
    assert {(e.key.kind, e.reason) for e in install.errors} == {("TrainJob", "Forbidden")}, install.errors
    assert "TrainingRuntime" in {k.kind for k in install.keys("created")}  # created after the refusals
    assert not h.upgrade(m.RELEASE, vals).errors


def test_gitops_without_an_existing_secret_is_refused_with_the_reason():
    with pytest.raises(helm.HelmValuesError) as refused:
        render(m.load_values(set_values={"gitOps": True}), m.RELEASE)
    assert "existingSecret" in str(refused.value)


# --- the model refuses what the API server refuses -------------------------------------------------------


def trainjob_objects() -> list[dict]:
    objects = m.render_chart(set_values={"tune.backend": "trainjob"})
    return [o for o in objects if not m.is_test(o)]


def test_api_model_enforces_the_trainjob_crds_cel_rules():
    job = next(o for o in trainjob_objects() if o["kind"] == "TrainJob")
    schema = crd_schema("trainer.kubeflow.org", "TrainJob")
    assert cel_errors(schema, job) == []
    changed = copy.deepcopy(job)
    changed["spec"]["trainer"]["image"] = "elsewhere:1"
    assert cel_errors(schema, changed, job) == ["spec.trainer: Invalid value: field is immutable"]
    changed = copy.deepcopy(job)
    changed["spec"]["runtimeRef"]["name"] = "other"
    assert cel_errors(schema, changed, job) == ["spec.runtimeRef: Invalid value: field is immutable"]
    changed["metadata"]["name"] = "Not_A_DNS_Label"
    assert "metadata.name must match RFC 1035" in " ".join(cel_errors(schema, changed))
    # through map lists (runtimePatches by manager, replicatedJobs by name) to a patched pod's volumes
    patching = m.render_chart(set_values={"tune.backend": "trainjob", "tune.trainJob.createRuntime": False})
    job = next(o for o in patching if o["kind"] == "TrainJob")
    changed = copy.deepcopy(job)
    rjob = changed["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][
        0
    ]
    rjob["template"]["spec"]["template"]["spec"]["volumes"].append({"name": "x", "emptyDir": {}})
    (error,) = cel_errors(schema, changed, job)
    assert error.endswith("template.spec.volumes: Invalid value: field is immutable"), error
    runtime = crd_schema("trainer.kubeflow.org", "ClusterTrainingRuntime")
    both = {"spec": {"mlPolicy": {"torch": {}, "mpi": {}}, "template": {"spec": {}}}}
    assert cel_errors(runtime, both) == [
        "spec.mlPolicy: Invalid value: Only one of the policy can be configured"
    ]


def test_api_model_refuses_the_documented_immutable_core_changes():
    cluster = ApiServer()
    objects = [o for o in m.render_chart() if not m.is_test(o)]
    for obj in objects:
        cluster.create(obj)

    def refused(kind: str, change) -> str:
        obj = copy.deepcopy(next(o for o in objects if o["kind"] == kind))
        change(obj)
        with pytest.raises(ApiError) as error:
            cluster.update(obj)
        assert error.value.immutable
        return error.value.message

    assert "serviceName" in refused("StatefulSet", lambda o: o["spec"].update(serviceName="x"))
    assert "spec.template" in refused(
        "Job", lambda o: o["spec"]["template"]["spec"].update(restartPolicy="Never")
    )
    assert "may not change" in refused("Service", lambda o: o["spec"].update(clusterIP="None"))
    assert "spec is immutable" in refused(
        "PersistentVolumeClaim", lambda o: o["spec"].update(accessModes=["ReadWriteOnce", "ReadOnlyMany"])
    )
    assert "less than previous" in refused(
        "PersistentVolumeClaim", lambda o: o["spec"]["resources"]["requests"].update(storage="1Gi")
    )
    assert "spec.selector" in refused(
        "Deployment", lambda o: o["spec"]["selector"]["matchLabels"].update(x="y")
    )
    service = copy.deepcopy(next(o for o in objects if o["kind"] == "Service"))
    assert cluster.update(service) is False  # the allocated clusterIP is kept when a manifest leaves it out


def test_api_model_holds_a_runtime_in_use_and_refuses_a_trainjob_without_one():
    cluster = ApiServer()
    objects = trainjob_objects()
    runtime = next(o for o in objects if o["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"))
    jobs = [o for o in objects if o["kind"] == "TrainJob"]
    with pytest.raises(ApiError, match="not found"):
        cluster.create(jobs[0])
    cluster.create(runtime)
    for job in jobs:
        cluster.create(job)
    assert cluster.delete(cluster.key(runtime)) == "terminating"
    with pytest.raises(ApiError, match="being deleted"):
        cluster.create(runtime)
    for job in jobs:
        cluster.delete(cluster.key(job))
    assert cluster.get(cluster.key(runtime)) is None  # the finalizer let go with the last TrainJob


# --- Pod Security Standard "restricted" ------------------------------------------------------------------

DATA_TYPES = {
    "pvc": {"data.type": "pvc"},
    "hostPath": {"data.type": "hostPath", "data.hostPath.path": "/srv/data"},
    "nfs": {"data.type": "nfs", "data.nfs.server": "nfs.example", "data.nfs.path": "/export/data"},
}
RESTRICTED_VOLUMES_REFUSED = {"hostPath", "nfs"}


@pytest.mark.parametrize("data_type", list(DATA_TYPES))
@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_pod_passes_restricted_or_the_values_are_refused(backend, nodes, data_type):
    """Every pod of the configuration, with what the operators add (the Training Operator's init-pytorch
    as the project's template for it makes it), passes "restricted"; values that cannot are refused in
    restricted mode (the default) by one line naming the value and the way out."""
    vals = m.load_values(
        set_values={
            "tune.backend": backend,
            "tune.nodesPerTrial": nodes,
            "dashboard.enabled": True,
            **DATA_TYPES[data_type],
        }
    )
    if data_type in RESTRICTED_VOLUMES_REFUSED:
        with pytest.raises(helm.HelmError) as refused:
            render(vals, m.RELEASE)
        line = str(refused.value)
        assert f"data.type={data_type}" in line and "podSecurity.restricted" in line, line
        return
    violations = pss.restricted_violations(render(vals, m.RELEASE))
    assert not violations, violations


def test_the_operators_default_init_container_is_what_restricted_refuses():
    """Why the project ships a template: v1.9's built-in init-pytorch has no securityContext."""
    objects = m.render_chart(set_values={"tune.nodesPerTrial": 2, "data.type": "pvc"})
    assert not pss.restricted_violations(objects)
    errors = pss.restricted_violations(objects, pss.builtin_init_containers)
    assert any("init-pytorch allowPrivilegeEscalation" in e for e in errors), errors


def pod(**spec) -> pss.Pod:
    base = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "c",
                "image": "x",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }
    metadata = {}
    for key, value in spec.items():
        if key == "container":
            base["containers"][0]["securityContext"].update(value)
        elif key == "ports":
            base["containers"][0]["ports"] = value
        elif key == "pod_context":
            base["securityContext"].update(value)
        elif key == "annotations":
            metadata["annotations"] = value
        else:
            base[key] = value
    return pss.Pod("Pod/x", metadata, base)


@pytest.mark.parametrize(
    ("change", "control"),
    [
        ({"hostNetwork": True}, "Host Namespaces"),
        ({"hostPID": True}, "Host Namespaces"),
        ({"container": {"privileged": True}}, "Privileged Containers"),
        ({"container": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}, "Capabilities"),
        ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "HostPath Volumes"),
        ({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]}, "Volume Types"),
        ({"container": {"appArmorProfile": {"type": "Unconfined"}}}, "AppArmor"),
        ({"annotations": {pss.APPARMOR_ANNOTATION + "c": "unconfined"}}, "AppArmor"),
        ({"ports": [{"containerPort": 80, "hostPort": 80}]}, "Host Ports"),
        ({"hostIPC": True}, "Host Namespaces"),
        ({"container": {"seLinuxOptions": {"user": "root"}}}, "SELinux"),
        ({"container": {"procMount": "Unmasked"}}, "/proc Mount Type"),
        ({"pod_context": {"seccompProfile": {"type": "Unconfined"}}}, "Seccomp"),
        ({"pod_context": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}, "Sysctls"),
        ({"container": {"windowsOptions": {"hostProcess": True}}}, "HostProcess"),
        ({"container": {"allowPrivilegeEscalation": True}}, "Privilege Escalation"),
        ({"pod_context": {"runAsNonRoot": False}}, "Running as Non-root"),
        ({"container": {"runAsUser": 0}}, "Running as Non-root user"),
        ({"container": {"capabilities": {}}}, "Capabilities"),
    ],
)
def test_pod_security_checker_flags_each_control(change, control):
    assert pss.violations(pod()) == []
    found = pss.violations(pod(**change))
    assert any(f": {control}:" in v for v in found), found
