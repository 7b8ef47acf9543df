"""The Docker engine from the tests: build the CPU image, make networks, run containers as pods would run.

Plain `docker` command lines (what a reader would type), no SDK: a failure shows the command and its output.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
IMAGE = "sideformer:cpu"
START_HINT = "run `tests/e2e/start-docker.sh` (installs docker.io and starts dockerd)"


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise RuntimeError(f"the docker command is missing: {START_HINT}") from None
    if check and proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def require_engine() -> None:
    """Fail (never skip) when no engine answers: CI must not pass without the container tests."""
    proc = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    if proc.returncode:
        raise RuntimeError(f"no Docker engine answers ({proc.stderr.strip()}): {START_HINT}")


def build_cpu_image(tag: str = IMAGE) -> str:
    """image/build-offline.sh: the air-gapped build CI uses; quick when nothing changed (layer cache)."""
    proc = subprocess.run(
        ["bash", "image/build-offline.sh", tag], cwd=REPO, capture_output=True, text=True, timeout=1500
    )
    if proc.returncode:
        raise RuntimeError(
            f"image/build-offline.sh failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr}"
        )
    return tag


@dataclass
class Network:
    """A user-defined network: containers find each other by name, as pods do through their Service."""

    name: str
    subnet: str
    gateway: str

    @classmethod
    def create(cls) -> Network:
        name = f"sideformer-test-{secrets.token_hex(4)}"
        docker("network", "create", name)
        ipam = json.loads(docker("network", "inspect", name).stdout)[0]["IPAM"]["Config"][0]
        return cls(name, ipam["Subnet"], ipam["Gateway"])

    def remove(self) -> None:
        docker("network", "rm", self.name, check=False)


@dataclass
class Container:
    """One detached container, named like the pod it stands for."""

    name: str
    args: Sequence[str]
    network: Network | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: Mapping[str, str] = field(default_factory=dict)  # host path -> "container path[:ro]"
    read_only_root: bool = True
    user: str = "1000:1000"
    drop_capabilities: bool = True
    image: str = IMAGE

    def start(self) -> Container:
        docker("rm", "--force", self.name, check=False)
        cmd = ["run", "--detach", "--name", self.name, "--hostname", self.name, "--shm-size", "256m"]
        if self.network:
            cmd += ["--network", self.network.name]
        cmd += ["--user", self.user, "--security-opt", "no-new-privileges"]
        if self.drop_capabilities:
            cmd += ["--cap-drop", "ALL"]
        if self.read_only_root:  # as the pods run: only mounted volumes and /tmp are writable
            cmd += ["--read-only", "--tmpfs", "/tmp:rw,exec,size=512m,mode=1777"]
        for key, value in self.env.items():
            cmd += ["--env", f"{key}={value}"]
        for host, target in self.mounts.items():
            cmd += ["--volume", f"{host}:{target}"]
        docker(*cmd, self.image, *self.args)
        return self

    def wait(self, timeout: float = 900) -> int:
        proc = docker("wait", self.name, timeout=timeout)
        return int(proc.stdout.strip())

    def logs(self) -> str:
        proc = docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def kill(self) -> None:
        docker("kill", self.name, check=False)

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False)

    def wait_for_log(self, text: str, timeout: float = 300) -> None:

        def logged() -> bool:
            if text in self.logs():
                return True
            state = json.loads(docker("inspect", self.name).stdout)[0]["State"]
            if not state["Running"]:
                raise AssertionError(
                    f"{self.name} exited {state['ExitCode']} before {text!r}:\n{self.logs()}"
                )
            return False

        wait_until(logged, timeout, lambda: f"{self.name}: no {text!r}:\n{self.logs()}", interval=1)


def writable_dir(path: Path) -> Path:
    """A host folder the image's user (uid 1000) can write, as fsGroup makes a volume in a pod."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path
