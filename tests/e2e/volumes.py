"""The volumes of rendered pods, as the kubelet makes them, on the host (for tests/e2e/pods.py):

- configMap and secret volumes: read-only folders of files with their defaultMode / items modes;
- emptyDir: one folder per pod (mode 0777 plus fsGroup, as the kubelet makes it), shared by its init and
  main containers; `medium: Memory` is a tmpfs of its `sizeLimit`;
- PersistentVolumeClaim: one host folder per claim, shared by every pod that mounts it (mode 0777 like
  kind's local-path volumes, then fsGroup applied as CSI volumes get it); a claim nothing renders fails,
  as it would stay Pending.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e import manifests as m

UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity(text: str | int) -> int:
    """A Kubernetes memory quantity in bytes ("512Mi", "1Gi", "128974848")."""
    match = re.fullmatch(r"(\d+)([KMGT]i?|k)?", str(text))
    if not match:
        raise ValueError(f"memory quantity {text!r}: not understood here")
    return int(match.group(1)) * UNITS.get(match.group(2) or "", 1)


def apply_fs_group(path: Path, gid: int | None) -> None:
    """What the kubelet does with fsGroup: group ownership, group read/write, setgid folders."""
    if gid is None or path.stat().st_gid == gid:  # fsGroupChangePolicy OnRootMismatch
        return
    for folder, _, files in os.walk(path):
        for entry in [folder, *(os.path.join(folder, f) for f in files)]:
            os.chown(entry, -1, gid)
            mode = os.stat(entry).st_mode
            os.chmod(entry, mode | 0o060 | (0o2010 if entry == folder else 0))


def write_files(folder: Path, data: dict[str, str], source: dict[str, Any], gid: int | None) -> Path:
    """A configMap or secret volume: its keys (or `items`) as files with their modes."""
    folder.mkdir(parents=True, exist_ok=True)
    default = int(source.get("defaultMode", 0o644))
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        if item["key"] not in data:
            raise KeyError(f"volume {folder.name}: no key {item['key']}")
        path = folder / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data[item["key"]])
        if gid is not None:
            os.chown(path, 0, gid)
        path.chmod(int(item.get("mode", default)))
    return folder


@dataclass
class Volumes:
    """Host folders for the volumes of one rehearsal's pods."""

    objects: list[dict[str, Any]]
    root: Path
    claims: dict[str, Path] = field(default_factory=dict)  # PVC name -> host folder
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def folder(self, pod: str, spec: dict[str, Any], name: str) -> Path:
        """The host folder behind volume `name` of pod `pod` (made on first use)."""
        source = next(v for v in spec.get("volumes", []) if v["name"] == name)
        gid = (spec.get("securityContext") or {}).get("fsGroup")
        folder = self.root / "pods" / pod / name
        if "persistentVolumeClaim" in source:
            claim = source["persistentVolumeClaim"]["claimName"]
            with self._lock:
                if claim not in self.claims:
                    m.one(self.objects, "PersistentVolumeClaim", claim)  # else it would stay Pending
                    path = self.root / "claims" / claim
                    path.mkdir(parents=True)
                    path.chmod(0o777)
                    self.claims[claim] = path
                apply_fs_group(self.claims[claim], gid)
            return self.claims[claim]
        if "emptyDir" in source:
            if not folder.exists():
                folder.mkdir(parents=True)
                folder.chmod(0o777)
                apply_fs_group(folder, gid)
            return folder
        if "configMap" in source:
            data = m.config_map_data(self.objects, source["configMap"]["name"])
            if data is None:
                raise KeyError(f"{pod}: volume {name} needs ConfigMap {source['configMap']['name']}")
            return write_files(folder, data, source["configMap"], gid)
        if "secret" in source:
            data = m.secret_data(self.objects, source["secret"]["secretName"])
            if data is None:
                raise KeyError(f"{pod}: volume {name} needs Secret {source['secret']['secretName']}")
            folder.parent.mkdir(parents=True, exist_ok=True)
            return write_files(folder, data, source["secret"], gid)
        raise ValueError(f"{pod}: volume {name} {sorted(source)} has no stand-in here")

    def mounts(self, pod: str, spec: dict[str, Any], c: dict[str, Any]) -> list[str]:
        """`--mount` specifications of a container's volumeMounts."""
        specs = []
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in c.get("volumeMounts", []):
            source, target = volumes[mount["name"]], mount["mountPath"]
            empty = source.get("emptyDir")
            if empty is not None and empty.get("medium") == "Memory":
                users = [
                    x["name"]
                    for x in [*spec.get("initContainers", []), *spec["containers"]]
                    if any(v["name"] == mount["name"] for v in x.get("volumeMounts", []))
                ]
                if len(users) > 1:
                    raise ValueError(f"{pod}: memory emptyDir {mount['name']} shared by {users}: no stand-in")
                size = f",tmpfs-size={quantity(empty['sizeLimit'])}" if "sizeLimit" in empty else ""
                specs.append(f"type=tmpfs,destination={target},tmpfs-mode=1777{size}")
                continue
            host = self.folder(pod, spec, mount["name"])
            if mount.get("subPath"):
                host = host / mount["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            read_only = mount.get("readOnly") or "configMap" in source or "secret" in source
            specs.append(f"type=bind,source={host},destination={target}" + (",readonly" if read_only else ""))
        return specs
