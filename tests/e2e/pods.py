"""Run rendered pods in Docker, container for container, the way the kubelet (and the Training Operator)
would run them. Everything comes from the rendered objects (tests/e2e/manifests.py):

- image, command (`--entrypoint` + its other words) and args, with Kubernetes' `$(VAR)` expansion;
- env: plain values, secretKeyRef / configMapKeyRef / envFrom resolved from the rendered Secrets and
  ConfigMaps (values travel in an --env-file, never on a command line), the operator's variables;
- volumes as tests/e2e/volumes.py makes them (configMap files with modes, emptyDir, memory tmpfs, one
  host folder per claim);
- securityContext: runAsUser/runAsGroup, fsGroup and supplementalGroups (--group-add), runAsNonRoot
  (refused as the kubelet refuses it), readOnlyRootFilesystem, capabilities, allowPrivilegeEscalation;
- limits.memory (--memory, no swap); the pod's restartPolicy as docker's (OnFailure = on-failure);
- Service names (and the pod's own name, as the operator's per-pod Services give it) as network aliases
  of the main containers on one user-defined network; readiness probes before a pod counts as ready.

Differences from a kubelet, by construction: each container is its own Docker container, so the
containers of one pod share volumes but not localhost or a process namespace; init containers are not
retried (a failure fails the test); probes other than readiness are not run.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e import manifests as m
from tests.e2e import trainjobs as tj
from tests.e2e.docker import Container, Network, docker
from tests.e2e.volumes import Volumes, quantity

RESTART = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of `$(VAR)` in command, args and env values: defined variables are
    replaced, `$$` is a literal `$`, anything else stays as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


@dataclass(frozen=True)
class Pod:
    """A pod as its controller creates it: name, spec (the operator's additions included), labels."""

    name: str
    owner: dict[str, Any]
    spec: dict[str, Any]
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def keep_running(self) -> bool:
        """StatefulSet and Deployment pods serve until the release goes; Jobs and Pods run to the end."""
        return self.owner["kind"] in ("StatefulSet", "Deployment")

    @property
    def containers(self) -> list[tuple[dict[str, Any], bool]]:
        """(container, is_init) in the order the kubelet starts them."""
        return [(c, True) for c in self.spec.get("initContainers", [])] + [
            (c, False) for c in self.spec["containers"]
        ]


def pods_of(obj: dict[str, Any], objects: Sequence[dict[str, Any]] = ()) -> list[Pod]:
    """The pods a rendered object makes: PyTorchJob replicas `<job>-<replica>-<i>` (with what the operator
    adds), TrainJob nodes `<job>-node-0-<i>` (JobSet's host names; their runtime is looked up in `objects`,
    and the torch plugin's additions are in), StatefulSet replicas `<name>-<i>`, one pod `<name>-0` per Job
    and Deployment replica (their controllers add a random suffix instead), a Pod itself; nothing for other
    kinds (a TrainingRuntime is a template)."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "TrainJob":
        runtime = tj.runtime_of(obj, list(objects))
        labels = {
            **(tj.patched_pod_template(obj, runtime).get("metadata", {}).get("labels") or {}),
            "jobset.sigs.k8s.io/jobset-name": name,
            "jobset.sigs.k8s.io/replicatedjob-name": tj.TRAINER_JOB,
        }
        return [
            Pod(
                tj.pod_name(obj, i),
                obj,
                tj.node_pod_spec(obj, runtime, list(objects)),
                {**labels, tj.COMPLETION_INDEX: str(i)},
                {tj.COMPLETION_INDEX: str(i)},
            )
            for i in range(tj.num_nodes(obj, runtime))
        ]
    if kind == "PyTorchJob":
        pods = []
        for replica, spec in obj["spec"]["pytorchReplicaSpecs"].items():
            labels = {
                **(spec["template"].get("metadata", {}).get("labels") or {}),
                "training.kubeflow.org/job-name": name,
                "training.kubeflow.org/replica-type": replica.lower(),
            }
            for i in range(int(spec.get("replicas", 1))):
                pod_name = f"{name}-{replica.lower()}-{i}"
                spec_i = m.operator_pod_spec(obj, replica, i)
                pods.append(
                    Pod(pod_name, obj, spec_i, {**labels, "training.kubeflow.org/replica-index": str(i)})
                )
        return pods
    if kind == "Pod":
        return [Pod(name, obj, obj["spec"], obj["metadata"].get("labels") or {})]
    if kind in ("Job", "Deployment", "StatefulSet"):
        template = obj["spec"]["template"]
        labels = template.get("metadata", {}).get("labels") or {}
        replicas = 1 if kind == "Job" else int(obj["spec"].get("replicas", 1))
        return [Pod(f"{name}-{i}", obj, template["spec"], labels) for i in range(replicas)]
    return []


@dataclass
class Record:
    """One container's run: a row of the rehearsal's table."""

    pod: str
    container: str
    image: str
    uid: str
    exit_code: int | None = None
    seconds: float = 0.0
    restarts: int = 0
    init: bool = False
    stopped: bool = False  # a serving container, stopped by `stop_serving`


@dataclass
class Cluster:
    """The pods of one rehearsal: rendered objects, host folders for volumes, one network."""

    objects: list[dict[str, Any]]
    root: Path
    network: Network
    records: list[Record] = field(default_factory=list)
    started: list[Container] = field(default_factory=list)
    serving: list[tuple[Pod, Container, Record, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    volumes: Volumes = field(init=False)

    def __post_init__(self) -> None:
        self.volumes = Volumes(self.objects, self.root)

    @property
    def claims(self) -> dict[str, Path]:
        """PersistentVolumeClaim name -> its host folder."""
        return self.volumes.claims

    # -- the rendered Secrets and ConfigMaps --------------------------------------------------------------

    def secret(self, name: str) -> dict[str, str] | None:
        return m.secret_data(self.objects, name)

    def config_map(self, name: str) -> dict[str, str] | None:
        return m.config_map_data(self.objects, name)

    def secret_values(self) -> list[str]:
        return [
            v
            for s in m.find(self.objects, "Secret")
            for v in (self.secret(s["metadata"]["name"]) or {}).values()
        ]

    def _ref(self, pod: Pod, kind: str, ref: dict[str, Any], what: str) -> str | None:
        source = self.secret(ref["name"]) if kind == "Secret" else self.config_map(ref["name"])
        if source is not None and ref["key"] in source:
            return source[ref["key"]]
        if ref.get("optional"):
            return None
        raise KeyError(
            f"{pod.name}: {what} needs {kind} {ref['name']} key {ref['key']}, which nothing renders"
        )

    def env(self, pod: Pod, c: dict[str, Any]) -> dict[str, str]:
        """The container's environment as the kubelet builds it: envFrom, then env in order."""
        env: dict[str, str] = {}
        for source in c.get("envFrom", []):
            kind, ref = (
                ("Secret", source["secretRef"])
                if "secretRef" in source
                else ("ConfigMap", source["configMapRef"])
            )
            data = self.secret(ref["name"]) if kind == "Secret" else self.config_map(ref["name"])
            if data is None and not ref.get("optional"):
                raise KeyError(f"{pod.name}: envFrom needs {kind} {ref['name']}, which nothing renders")
            env.update({source.get("prefix", "") + k: v for k, v in (data or {}).items()})
        for var in c.get("env", []):
            name, value_from = var["name"], var.get("valueFrom") or {}
            if "secretKeyRef" in value_from:
                value = self._ref(pod, "Secret", value_from["secretKeyRef"], f"env {name}")
            elif "configMapKeyRef" in value_from:
                value = self._ref(pod, "ConfigMap", value_from["configMapKeyRef"], f"env {name}")
            elif "fieldRef" in value_from:
                path = value_from["fieldRef"]["fieldPath"]
                fields = {"metadata.name": pod.name, "metadata.namespace": m.NAMESPACE}
                fields.update({f"metadata.annotations['{k}']": v for k, v in pod.annotations.items()})
                if path not in fields:
                    raise ValueError(f"{pod.name}: env {name} fieldRef {path} has no stand-in here")
                value = fields[path]
            elif value_from:
                raise ValueError(f"{pod.name}: env {name} {sorted(value_from)} has no stand-in here")
            else:
                value = expand(str(var.get("value", "")), env)
            if value is not None:
                env[name] = value
        return env

    # -- containers ---------------------------------------------------------------------------------------

    def aliases(self, pod: Pod) -> list[str]:
        """The names a pod is reached by: its own (the operator's per-pod Service; a StatefulSet pod's
        <pod>.<serviceName>; a TrainJob node's <host>.<trainjob>) and each Service whose selector matches
        its labels."""
        names = [pod.name]
        if pod.owner["kind"] == "StatefulSet":
            names.append(f"{pod.name}.{pod.owner['spec']['serviceName']}")
        if pod.owner["kind"] == "TrainJob":  # <host name>.<subdomain>: JobSet's headless Service
            names.append(f"{pod.name}.{pod.owner['metadata']['name']}")
        ports = {
            p.get("name"): p["containerPort"] for c in pod.spec["containers"] for p in c.get("ports", [])
        }
        for service in m.find(self.objects, "Service"):
            selector = service["spec"].get("selector") or {}
            if not selector or not selector.items() <= pod.labels.items():
                continue
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                number = ports.get(target) if isinstance(target, str) else target
                if number != port["port"]:  # docker cannot remap a port behind an alias
                    raise ValueError(f"Service {service['metadata']['name']} port {port['port']} -> {target}")
            names.append(service["metadata"]["name"])
        return names

    def container(self, pod: Pod, c: dict[str, Any], init: bool) -> Container:
        security = {**(pod.spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
        if security.get("privileged"):
            raise ValueError(f"{pod.name}/{c['name']}: privileged containers have no stand-in here")
        env = self.env(pod, c)
        command = [expand(str(w), env) for w in c.get("command", [])]
        args = [expand(str(w), env) for w in c.get("args", [])]
        user = None
        if "runAsUser" in security:
            user = str(security["runAsUser"]) + (
                f":{security['runAsGroup']}" if "runAsGroup" in security else ""
            )
        elif security.get("runAsNonRoot"):
            image_user = json.loads(docker("image", "inspect", c["image"]).stdout)[0]["Config"]["User"]
            if image_user.split(":")[0] in ("", "0", "root"):
                raise AssertionError(f"{pod.name}/{c['name']}: runAsNonRoot, but {c['image']} runs as root")
        pod_security = pod.spec.get("securityContext") or {}
        groups = [pod_security["fsGroup"]] if "fsGroup" in pod_security else []
        groups += pod_security.get("supplementalGroups", [])
        capabilities = security.get("capabilities") or {}
        limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        return Container(
            name=f"{pod.name}.{c['name']}.{self.network.name.rsplit('-', 1)[-1]}",
            args=command[1:] + args if command else args,
            entrypoint=command[0] if command else None,
            image=c["image"],
            network=self.network,
            hostname=pod.name,
            aliases=() if init else self.aliases(pod),
            env=env,
            user=user,
            group_add=groups,
            cap_drop=capabilities.get("drop", []),
            cap_add=capabilities.get("add", []),
            no_new_privileges=security.get("allowPrivilegeEscalation") is False,
            read_only_root=bool(security.get("readOnlyRootFilesystem")),
            memory=quantity(limit) if limit else None,
            restart="no" if init else RESTART[pod.spec.get("restartPolicy", "Always")],
            extra_mounts=self.volumes.mounts(pod.name, pod.spec, c),
            scratch_tmp=False,
            env_dir=self.root / "env",
            redact=self.secret_values(),
        )

    def start(self, pod: Pod, c: dict[str, Any], init: bool) -> tuple[Container, Record]:
        """Start one container of a pod and record it (its exit code is filled in when it ends)."""
        container = self.container(pod, c, init)
        with self._lock:
            self.started.append(container)
        container.start()
        uid = json.loads(docker("inspect", container.name).stdout)[0]["Config"]["User"] or "0 (image)"
        record = Record(pod.name, c["name"], c["image"], uid, init=init)
        with self._lock:
            self.records.append(record)
        return container, record

    def _finish(self, container: Container, record: Record, started: float, timeout: float) -> int:
        code = container.finish(timeout)
        record.exit_code, record.seconds = code, time.monotonic() - started
        record.restarts = container.state()["RestartCount"]
        return code

    def run_pod(self, pod: Pod, timeout: float = 900) -> None:
        """Init containers one after the other, each to exit 0; then the main containers. A Job's or a
        Pod's run to their end (restarted by their policy); a StatefulSet's or Deployment's must pass
        their readiness probes and keep serving (see `stop_serving`)."""
        for c, init in pod.containers:
            if not init:
                continue
            started = time.monotonic()
            container, record = self.start(pod, c, init=True)
            code = self._finish(container, record, started, timeout)
            assert code == 0, f"{container.name} exited {code}:\n{container.logs()[-4000:]}"
        mains = []
        for c, init in pod.containers:
            if not init:
                started = time.monotonic()
                mains.append((c, *self.start(pod, c, init=False), started))
        for c, container, record, started in mains:
            if pod.keep_running:
                self._await_ready(pod, c, container, timeout)
                with self._lock:
                    self.serving.append((pod, container, record, started))
            else:
                code = self._finish(container, record, started, timeout)
                assert code == 0, f"{container.name} exited {code}:\n{container.logs()[-4000:]}"

    def _await_ready(self, pod: Pod, c: dict[str, Any], container: Container, timeout: float) -> None:
        """The container's readinessProbe (exec or httpGet), tried every 2 s until it passes."""
        probe = c.get("readinessProbe")
        deadline = time.monotonic() + timeout
        while probe:
            state = container.state()
            if not state["Running"]:
                raise AssertionError(
                    f"{container.name} exited {state['ExitCode']}:\n{container.logs()[-4000:]}"
                )
            if self._probe(container, c, probe):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{container.name}: not ready after {timeout:.0f} s:\n{container.logs()[-4000:]}"
                )
            time.sleep(2)

    def _probe(self, container: Container, c: dict[str, Any], probe: dict[str, Any]) -> bool:
        if "exec" in probe:
            return (
                docker("exec", container.name, *probe["exec"]["command"], check=False, timeout=60).returncode
                == 0
            )
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = get["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in c.get("ports", []) if p.get("name") == port)
            info = json.loads(docker("inspect", container.name).stdout)[0]
            address = info["NetworkSettings"]["Networks"][self.network.name]["IPAddress"]
            try:
                with urllib.request.urlopen(f"http://{address}:{port}{get.get('path', '/')}", timeout=5) as r:
                    return 200 <= r.status < 400
            except OSError:
                return False
        raise ValueError(f"{container.name}: readiness probe {sorted(probe)} has no stand-in here")

    def stop_serving(self, grace: float = 30) -> None:
        """Stop what still serves, as `helm uninstall` deletes its pods: the image's stop signal, then
        SIGKILL after the pod's grace period (Kubernetes' default: 30 s)."""
        for _, container, record, started in self.serving:
            docker("stop", "--time", str(int(grace)), container.name, timeout=grace + 60)
            state = container.state()
            record.exit_code, record.seconds = state["ExitCode"], time.monotonic() - started
            record.restarts, record.stopped = state["RestartCount"], True
        self.serving.clear()

    def remove_all(self) -> None:
        for container in self.started:
            container.remove()

    def table(self) -> str:
        rows = [("POD", "CONTAINER", "IMAGE", "UID", "EXIT", "SECONDS")]
        for r in self.records:
            exit_code = "-" if r.exit_code is None else str(r.exit_code)
            if r.restarts:
                exit_code += f" ({r.restarts} restarts)"
            if r.stopped:
                exit_code += " (stopped)"
            rows.append(
                (
                    r.pod,
                    r.container + (" (init)" if r.init else ""),
                    r.image,
                    r.uid,
                    exit_code,
                    f"{r.seconds:.1f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
        )
