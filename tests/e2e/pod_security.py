"""The Pod Security Standards, "baseline" and "restricted" levels, as published for Kubernetes v1.33:
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (what Pod Security Admission enforces
with `pod-security.kubernetes.io/enforce: restricted`). No maintained checker of these rules installs from
PyPI (Kubernetes' own is Go, k8s.io/pod-security-admission), so every control of the page is here, one
function each, named as the page names it.

`pods_of` gives every pod an object makes, including what operators add: the Training Operator v1.9's
`init-pytorch` init container on PyTorchJob Worker pods (as the project's template for its
`--pytorch-init-container-template-file` flag makes it, or its built-in one), and a TrainJob's pods from
its runtime.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, NamedTuple

from tests.e2e import manifests as m
from tests.e2e import trainjobs as tj

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim", "projected",
    "secret",
}  # fmt: skip
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


class Pod(NamedTuple):
    where: str  # e.g. "PyTorchJob/x Worker pod"
    metadata: dict[str, Any]
    spec: dict[str, Any]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]


def _ctx(c: dict[str, Any]) -> dict[str, Any]:
    return c.get("securityContext") or {}


def _windows(pod: Pod) -> bool:
    return (pod.spec.get("os") or {}).get("name") == "windows"


# --- baseline --------------------------------------------------------------------------------------------


def host_process(pod: Pod) -> list[str]:
    contexts = [pod.spec.get("securityContext") or {}, *(_ctx(c) for c in _containers(pod.spec))]
    return (
        ["HostProcess: windowsOptions.hostProcess"]
        if any((c.get("windowsOptions") or {}).get("hostProcess") for c in contexts)
        else []
    )


def host_namespaces(pod: Pod) -> list[str]:
    return [f"Host Namespaces: {f}" for f in ("hostNetwork", "hostPID", "hostIPC") if pod.spec.get(f)]


def privileged(pod: Pod) -> list[str]:
    return [f"Privileged Containers: {c['name']}" for c in _containers(pod.spec) if _ctx(c).get("privileged")]


def capabilities_baseline(pod: Pod) -> list[str]:
    return [
        f"Capabilities: {c['name']} adds {sorted(added)}"
        for c in _containers(pod.spec)
        if (added := set((_ctx(c).get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES)
    ]


def host_path_volumes(pod: Pod) -> list[str]:
    return [f"HostPath Volumes: {v['name']}" for v in pod.spec.get("volumes", []) if "hostPath" in v]


def host_ports(pod: Pod) -> list[str]:
    return [
        f"Host Ports: {c['name']} hostPort {p['hostPort']}"
        for c in _containers(pod.spec)
        for p in c.get("ports", [])
        if p.get("hostPort")
    ]


def apparmor(pod: Pod) -> list[str]:
    errors = []
    profiles = [("pod", (pod.spec.get("securityContext") or {}).get("appArmorProfile"))]
    profiles += [(c["name"], _ctx(c).get("appArmorProfile")) for c in _containers(pod.spec)]
    for name, profile in profiles:
        if profile and profile.get("type") not in ("RuntimeDefault", "Localhost"):
            errors.append(f"AppArmor: {name} appArmorProfile.type {profile.get('type')}")
    for key, value in (pod.metadata.get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            errors.append(f"AppArmor: annotation {key}={value}")
    return errors


def selinux(pod: Pod) -> list[str]:
    errors = []
    options = [("pod", (pod.spec.get("securityContext") or {}).get("seLinuxOptions"))]
    options += [(c["name"], _ctx(c).get("seLinuxOptions")) for c in _containers(pod.spec)]
    for name, opts in options:
        if not opts:
            continue
        if opts.get("type", "") not in SELINUX_TYPES:
            errors.append(f"SELinux: {name} type {opts['type']}")
        if opts.get("user") or opts.get("role"):
            errors.append(f"SELinux: {name} sets user or role")
    return errors


def proc_mount(pod: Pod) -> list[str]:
    return [
        f"/proc Mount Type: {c['name']}"
        for c in _containers(pod.spec)
        if _ctx(c).get("procMount") not in (None, "Default")
    ]


def seccomp_baseline(pod: Pod) -> list[str]:
    profiles = [("pod", (pod.spec.get("securityContext") or {}).get("seccompProfile"))]
    profiles += [(c["name"], _ctx(c).get("seccompProfile")) for c in _containers(pod.spec)]
    return [f"Seccomp: {name} Unconfined" for name, p in profiles if p and p.get("type") == "Unconfined"]


def sysctls(pod: Pod) -> list[str]:
    names = {s["name"] for s in (pod.spec.get("securityContext") or {}).get("sysctls") or []}
    return [f"Sysctls: {n}" for n in sorted(names - SAFE_SYSCTLS)]


BASELINE: list[Callable[[Pod], list[str]]] = [
    host_process, host_namespaces, privileged, capabilities_baseline, host_path_volumes, host_ports, apparmor,
    selinux, proc_mount, seccomp_baseline, sysctls,
]  # fmt: skip


# --- restricted ------------------------------------------------------------------------------------------


def volume_types(pod: Pod) -> list[str]:
    errors = []
    for v in pod.spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if kinds - RESTRICTED_VOLUMES:
            errors.append(f"Volume Types: {v['name']} is {sorted(kinds)[0]}")
    return errors


def privilege_escalation(pod: Pod) -> list[str]:
    if _windows(pod):
        return []
    return [
        f"Privilege Escalation: {c['name']} allowPrivilegeEscalation is not false"
        for c in _containers(pod.spec)
        if _ctx(c).get("allowPrivilegeEscalation") is not False
    ]


def running_as_non_root(pod: Pod) -> list[str]:
    pod_level = (pod.spec.get("securityContext") or {}).get("runAsNonRoot")
    errors = []
    for c in _containers(pod.spec):
        value = _ctx(c).get("runAsNonRoot", pod_level)
        if value is not True:
            errors.append(f"Running as Non-root: {c['name']} runAsNonRoot is not true")
    if pod_level is False:
        errors.append("Running as Non-root: pod runAsNonRoot false")
    return errors


def running_as_non_root_user(pod: Pod) -> list[str]:
    users = [("pod", (pod.spec.get("securityContext") or {}).get("runAsUser"))]
    users += [(c["name"], _ctx(c).get("runAsUser")) for c in _containers(pod.spec)]
    return [f"Running as Non-root user: {name} runAsUser 0" for name, uid in users if uid == 0]


def seccomp_restricted(pod: Pod) -> list[str]:
    if _windows(pod):
        return []
    pod_type = ((pod.spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    errors = []
    for c in _containers(pod.spec):
        kind = (_ctx(c).get("seccompProfile") or {}).get("type", pod_type)
        if kind not in ("RuntimeDefault", "Localhost"):
            errors.append(f"Seccomp: {c['name']} seccompProfile.type is {kind or 'unset'}")
    return errors


def capabilities_restricted(pod: Pod) -> list[str]:
    if _windows(pod):
        return []
    errors = []
    for c in _containers(pod.spec):
        caps = _ctx(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            errors.append(f"Capabilities: {c['name']} does not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            errors.append(f"Capabilities: {c['name']} adds {sorted(caps['add'])}")
    return errors


RESTRICTED: list[Callable[[Pod], list[str]]] = [
    *BASELINE, volume_types, privilege_escalation, running_as_non_root, running_as_non_root_user,
    seccomp_restricted, capabilities_restricted,
]  # fmt: skip


def violations(pod: Pod, level: str = "restricted") -> list[str]:
    checks = RESTRICTED if level == "restricted" else BASELINE
    return [f"{pod.where}: {error}" for check in checks for error in check(pod)]


# --- the pods each object makes --------------------------------------------------------------------------


def builtin_init_containers(job: dict[str, Any], replica: str) -> list[dict[str, Any]]:
    """`init-pytorch` from the Training Operator v1.9's built-in template: the project's template for it
    (k8s/operator/restricted-init-container, manifests.operator_init_containers) less the securityContext
    it adds."""
    containers = m.operator_init_containers(job, replica)
    for c in containers:
        c.pop("securityContext", None)
    return containers


def pods_of(
    obj: dict[str, Any],
    objects: list[dict[str, Any]],
    init_containers: Callable[[dict[str, Any], str], list[dict[str, Any]]] = m.operator_init_containers,
) -> list[Pod]:
    """Every pod `obj` leads to, as it reaches Pod Security Admission."""
    what = f"{obj['kind']}/{obj['metadata']['name']}"
    kind = obj["kind"]
    if kind == "PyTorchJob":
        pods = []
        for replica, rspec in obj["spec"]["pytorchReplicaSpecs"].items():
            spec = copy.deepcopy(rspec["template"]["spec"])
            spec["initContainers"] = [*spec.get("initContainers", []), *init_containers(obj, replica)]
            pods.append(Pod(f"{what} {replica} pod", rspec["template"].get("metadata") or {}, spec))
        return pods
    if kind == "TrainJob":
        runtime = tj.runtime_of(obj, objects)
        template = tj.patched_pod_template(obj, runtime)
        return [Pod(f"{what} node pod", template.get("metadata") or {}, tj.trainjob_pod(obj, objects))]
    if kind in tj.RUNTIME_KINDS:
        return [
            Pod(
                f"{what} {r['name']} pod",
                r["template"]["spec"]["template"].get("metadata") or {},
                r["template"]["spec"]["template"]["spec"],
            )
            for r in obj["spec"]["template"]["spec"]["replicatedJobs"]
        ]
    if kind == "Pod":
        return [Pod(what, obj["metadata"], obj["spec"])]
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        template = obj["spec"]["template"]
        return [Pod(f"{what} pod", template.get("metadata") or {}, template["spec"])]
    return []


def restricted_violations(
    objects: list[dict[str, Any]],
    init_containers: Callable[[dict[str, Any], str], list[dict[str, Any]]] = m.operator_init_containers,
) -> list[str]:
    """Every "restricted" violation of every pod the objects lead to."""
    return [v for obj in objects for pod in pods_of(obj, objects, init_containers) for v in violations(pod)]
