"""Run a rendered pod's container in Docker, the way the kubelet and the Training Operator would run it.

Everything comes from the rendered object (tests/e2e/manifests.py): args, plain environment, secret
references, volume mounts, securityContext. The test supplies only what a cluster would: the Secrets' values,
host folders standing in for PersistentVolumeClaims, and the network. emptyDir volumes become per-pod
folders (/tmp and /dev/shm become a tmpfs and --shm-size), ConfigMaps become folders holding their files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e import manifests as m
from tests.e2e.docker import Container, Network, writable_dir

ENGINE_PROVIDED = ("/tmp", "/dev/shm")  # docker's --tmpfs /tmp and --shm-size give these


@dataclass
class Cluster:
    """What the pods of one test share: rendered objects, Secret values, volumes on the host, a network."""

    objects: list[dict[str, Any]]
    secrets: dict[tuple[str, str], str]  # (Secret name, key) -> value
    root: Path
    network: Network
    claims: dict[str, Path] = field(default_factory=dict)  # PVC name -> host folder (created when absent)
    started: list[Container] = field(default_factory=list)

    def pod(
        self, obj: dict[str, Any], replica: str = "Master", index: int = 0, container: str = "pytorch"
    ) -> Container:
        """The container `container` of pod `index` of `replica`, named as the pod: <job>-<replica>-<i>."""
        name = (
            f"{obj['metadata']['name']}-{replica.lower()}-{index}"
            if obj["kind"] == "PyTorchJob"
            else (f"{obj['metadata']['name']}-{container}")
        )
        spec = m.run_spec(obj, replica, container)
        env = dict(spec.env)
        if obj["kind"] == "PyTorchJob":
            env.update(m.operator_env(obj, replica, index))
        for var, ref in spec.secret_env.items():
            if (ref.name, ref.key) in self.secrets:
                env[var] = self.secrets[ref.name, ref.key]
            elif not ref.optional:
                raise KeyError(
                    f"{name}: env {var} needs Secret {ref.name} key {ref.key}, which the test lacks"
                )
        pod = m.pod_spec(obj, replica)
        c = m.container(pod, container)
        security = {**(pod.get("securityContext") or {}), **(c.get("securityContext") or {})}
        mounts = {
            str(self._volume(name, mount)): path + (":ro" if mount.read_only else "")
            for path, mount in spec.volume_mounts.items()
            if path not in ENGINE_PROVIDED
        }
        return Container(
            name=name,
            args=spec.args,
            network=self.network,
            env=env,
            mounts=mounts,
            read_only_root=bool(security.get("readOnlyRootFilesystem")),
            user=f"{security.get('runAsUser', 1000)}:{security.get('runAsGroup', 1000)}",
            drop_capabilities="ALL" in (security.get("capabilities") or {}).get("drop", []),
        )

    def start(self, container: Container) -> Container:
        self.started.append(container)
        return container.start()

    def run(self, container: Container, timeout: float = 900) -> str:
        """Start, wait, and return the logs; fail with them when the container does not exit 0."""
        code = self.start(container).wait(timeout)
        logs = container.logs()
        assert code == 0, f"{container.name} exited {code}:\n{logs[-4000:]}"
        return logs

    def remove_all(self) -> None:
        for container in self.started:
            container.remove()

    def _volume(self, pod_name: str, mount: m.Mount) -> Path:
        source = mount.source
        if "persistentVolumeClaim" in source:
            claim = source["persistentVolumeClaim"]["claimName"]
            return self.claims.setdefault(claim, writable_dir(self.root / "claims" / claim))
        if "configMap" in source:
            name = source["configMap"]["name"]
            folder = self.root / "configmaps" / name
            folder.mkdir(parents=True, exist_ok=True)
            for key, text in (m.one(self.objects, "ConfigMap", name).get("data") or {}).items():
                (folder / key).write_text(text)
            return folder
        if "emptyDir" in source:  # one per pod: its init containers and main container share it
            return writable_dir(self.root / "pods" / pod_name.rsplit("-", 1)[0] / mount.volume)
        raise ValueError(f"{pod_name}: volume {mount.volume} {sorted(source)} has no stand-in here")
