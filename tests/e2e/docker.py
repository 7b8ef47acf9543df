"""The Docker engine from the tests: build the CPU image, make networks, run containers as pods would run.

Plain `docker` command lines (what a reader would type), no SDK: a failure shows the command and its output.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import tempfile
import time
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


def build_stand_ins(postgres: str, init: str) -> None:
    """image/stand-ins/build.sh: offline stand-ins tagged `postgres` and `init` (the operator's init image);
    reused while image/stand-ins/ is unchanged (content hash), so a test run builds them at most once."""
    proc = subprocess.run(
        ["bash", "image/stand-ins/build.sh", postgres, init],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode:
        raise RuntimeError(
            f"image/stand-ins/build.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )


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
    """One detached container, named like the pod (and container) it stands for. The defaults are a
    standalone run of our image; tests/e2e/pods.py fills every field from a rendered pod."""

    name: str
    args: Sequence[str]
    network: Network | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: Mapping[str, str] = field(default_factory=dict)  # host path -> "container path[:ro]"
    read_only_root: bool = True
    user: str | None = "1000:1000"  # None: the image's USER
    image: str = IMAGE
    entrypoint: str | None = None  # replaces the image's ENTRYPOINT (a pod's `command[0]`)
    hostname: str | None = None
    aliases: Sequence[str] = ()  # names other containers on the network reach it by (Services)
    group_add: Sequence[int] = ()  # fsGroup and supplementalGroups
    cap_drop: Sequence[str] = ("ALL",)
    cap_add: Sequence[str] = ()
    no_new_privileges: bool = True
    memory: int | None = None  # bytes (limits.memory); swap is not allowed beyond it
    restart: str = "no"  # docker's policy: no | on-failure | always
    extra_mounts: Sequence[str] = ()  # `--mount` specifications (binds with options, tmpfs)
    scratch_tmp: bool = True  # --tmpfs /tmp for a read-only root; a pod mounts its own /tmp instead
    env_dir: Path | None = None  # where the env file goes (values never on a command line)
    redact: Sequence[str] = ()  # secret values to keep out of error messages

    def start(self) -> Container:
        docker("rm", "--force", self.name, check=False)
        cmd = ["run", "--detach", "--name", self.name, "--hostname", self.hostname or self.name]
        if self.network:
            cmd += ["--network", self.network.name]
            for alias in self.aliases:
                cmd += ["--network-alias", alias]
        if self.user:
            cmd += ["--user", self.user]
        for group in self.group_add:
            cmd += ["--group-add", str(group)]
        if self.no_new_privileges:
            cmd += ["--security-opt", "no-new-privileges"]
        for cap in self.cap_drop:
            cmd += ["--cap-drop", cap]
        for cap in self.cap_add:
            cmd += ["--cap-add", cap]
        if self.read_only_root:  # as the pods run: only mounted volumes (and /tmp) are writable
            cmd += ["--read-only"]
        if self.read_only_root and self.scratch_tmp:
            cmd += ["--tmpfs", "/tmp:rw,exec,size=512m,mode=1777", "--shm-size", "256m"]
        if self.memory:
            cmd += ["--memory", str(self.memory), "--memory-swap", str(self.memory)]
        cmd += ["--restart", self.restart]
        if self.env:
            cmd += ["--env-file", str(self._env_file())]
        for host, target in self.mounts.items():
            cmd += ["--volume", f"{host}:{target}"]
        for spec in self.extra_mounts:
            cmd += ["--mount", spec]
        if self.entrypoint is not None:
            cmd += ["--entrypoint", self.entrypoint]
        try:
            docker(*cmd, self.image, *self.args)
        except RuntimeError as error:
            message = str(error)
            for value in self.redact:
                message = message.replace(value, "***")
            raise RuntimeError(message) from None
        return self

    def _env_file(self) -> Path:
        """`--env-file`: the values (Secrets' among them) stay off the command line and out of errors."""
        folder = self.env_dir or Path(tempfile.mkdtemp(prefix="sideformer-env-"))
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        path = folder / f"{self.name}.env"
        lines = []
        for key, value in self.env.items():
            if "\n" in value:
                raise ValueError(f"{self.name}: env {key} spans lines, which --env-file cannot carry")
            lines.append(f"{key}={value}")
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def state(self) -> dict:
        """docker inspect's State, plus RestartCount."""
        info = json.loads(docker("inspect", self.name).stdout)[0]
        return {**info["State"], "RestartCount": info["RestartCount"]}

    def finish(self, timeout: float = 900) -> int:
        """The exit code once the container has exited for good: a restart policy may start it again
        after a failure (docker reports it "restarting" meanwhile), so only exit 0 or policy "no" ends it."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if state["Status"] == "exited" and (state["ExitCode"] == 0 or self.restart == "no"):
                return int(state["ExitCode"])
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: still {state['Status']} after {timeout:.0f} s (exit code "
                    f"{state['ExitCode']}, {state['RestartCount']} restarts):\n{self.logs()[-4000:]}"
                )
            time.sleep(1)

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
