"""A stand-in for the Kubeflow operators and the kubelet: pods are local trainer processes.

`TrainerKubelet` polls the Kubernetes emulator for PyTorchJobs and Trainer v2 TrainJobs (whose
pod is the TrainJob's trainer with its `podSpecOverrides` on the runtime's `node` container,
and whose topology comes as PET_MASTER_ADDR / PET_MASTER_PORT). A workload created suspended
waits until Kueue (the emulator's stand-in) admits it. For each new PyTorchJob it does what
the operator and a node would: it reads the Master replica's pod template, resolves the
container's environment (plain values, and `secretKeyRef`s from the attempt's Secret), adds
what the operator injects (`PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `MASTER_ADDR`,
`MASTER_PORT`), mounts the volumes and starts the container's command, `torchrun` over the
real trainer on this CPU. It moves the PyTorchJob's conditions as the operator does
(`Created` and `Running` at launch, `Succeeded` or `Failed` when the process ends, leaving a
failed pod with the exit code behind), and when the PyTorchJob is deleted it stops the pod as
the kubelet does: SIGTERM to the container's main process (torchrun passes it on to the
trainer, which saves a checkpoint and exits), then, after a grace period, SIGKILL to every
process of the pod (they carry its uid in their environment: the stand-in for its cgroup).
While the pod's processes live they hold the PyTorchJob as dependents (the emulator's
`hold_dependents`), so a foreground deletion keeps it, terminating, until they are gone.

What differs from a real node, and nothing else:
  * `python` in the command is this interpreter (the image's Python is the virtualenv's);
  * `MASTER_ADDR` is 127.0.0.1 and `MASTER_PORT` a free port, since every pod shares one host;
  * a ConfigMap volume is materialised as files in the pod's folder, and arguments under its
    mount path point there;
  * a PersistentVolumeClaim is a host folder, and it must be mounted at that same path (the
    service is configured with that path as its checkpoint root), so paths the trainer
    reports mean the same thing to the next attempt;
  * the grace period is `grace_s` (short) instead of the pod's `terminationGracePeriodSeconds`;
  * only single-node jobs (a Master replica, no Workers) are played.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.service.controller.k8s_emulator import EmulatorHandle

log = logging.getLogger(__name__)

# Set in every pod's environment: the processes that carry it are the pod's "cgroup", which is
# how the kubelet finds them all, torchrun's workers (in sessions of their own) included.
POD_MARKER = "E2E_KUBELET_POD"
_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
FINAL_CONDITIONS = {"Succeeded", "Failed", "Complete"}
PLURALS = ("pytorchjobs", "trainjobs")


@dataclass
class Pod:
    """One PyTorchJob's Master pod: the container's main process and everything it started."""

    job_name: str
    uid: str
    folder: Path
    process: subprocess.Popen
    terminating_since: float | None = None
    exit_code: int | None = None
    reported: bool = False
    released: bool = False  # its PyTorchJob no longer waits for it (emulator ADDITION 8)

    @property
    def log_path(self) -> Path:
        return self.folder / "pod.log"

    @property
    def alive(self) -> bool:
        """True while any process of the pod is left: torchrun, its workers or theirs."""
        self.process.poll()  # reap the main process if it is done
        return bool(container_processes(self.uid))

    def kill(self) -> None:
        """SIGKILL every process of the pod, as the end of the grace period does to a cgroup."""
        for pid in container_processes(self.uid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.poll()


class TrainerKubelet:
    """Runs the emulator's PyTorchJobs as local trainer processes; see the module docstring."""

    def __init__(
        self,
        cluster: EmulatorHandle,
        folder: Path,
        *,
        claims: dict[str, Path],
        poll_s: float = 0.2,
        grace_s: float = 20.0,
    ) -> None:
        self.cluster = cluster
        self.folder = Path(folder)
        self.claims = {name: Path(path) for name, path in claims.items()}
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.pods: dict[str, Pod] = {}  # by PyTorchJob uid, in launch order
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="e2e-kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and kill every pod still running."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for pod in list(self.pods.values()):
            pod.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                pod.process.wait(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # keep playing the node; the tests read `errors`
                log.exception("kubelet sync failed")
                self.errors.append(f"sync failed: {type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_s)

    # --- what the tests read -----------------------------------------------------------------

    def launched(self) -> list[str]:
        """Names of the PyTorchJobs run so far, one entry per launch, oldest first."""
        with self._lock:
            return [pod.job_name for pod in self.pods.values()]

    def pod(self, job_name: str) -> Pod | None:
        with self._lock:
            return next((p for p in reversed(self.pods.values()) if p.job_name == job_name), None)

    def tails(self, lines: int = 25) -> str:
        parts = [f"--- kubelet errors: {self.errors or 'none'}"]
        for pod in list(self.pods.values()):
            state = "running" if pod.alive else f"exited {pod.process.returncode}"
            parts.append(f"--- pod {pod.job_name} ({state}), {pod.log_path}:")
            parts.append(_tail(pod.log_path, lines))
        return "\n".join(parts)

    # --- one pass ----------------------------------------------------------------------------

    def sync(self) -> None:
        jobs = {
            job["metadata"]["uid"]: job for plural in PLURALS for job in self.cluster.objects(plural)
        }
        for uid, pod in list(self.pods.items()):
            job = jobs.get(uid)
            if job is None or job["metadata"].get("deletionTimestamp"):
                self._terminate(pod)
            elif not pod.reported and pod.process.poll() is not None:
                self._report_exit(pod, job)
            if job is not None and not pod.released and not pod.alive:
                # Its pods are gone: a foreground deletion waiting for them completes.
                pod.released = True
                with contextlib.suppress(KeyError):
                    self.cluster.release_dependents(_plural(job), pod.job_name)
        for uid, job in jobs.items():
            if uid in self.pods or _final(job) or _suspended(job):
                continue
            pod = self._launch(job)
            if pod is not None:
                with self._lock:
                    self.pods[uid] = pod

    def _launch(self, job: dict[str, Any]) -> Pod | None:
        name = job["metadata"]["name"]
        template, container = _trainjob_pod(job) if _plural(job) == "trainjobs" else _master_pod(job)
        secrets = {s["metadata"]["name"]: s for s in self.cluster.objects("secrets")}
        config_maps = {c["metadata"]["name"]: c for c in self.cluster.objects("configmaps")}
        folder = self.folder / f"{name}-{job['metadata']['uid'][:8]}"
        mounts = self._mount(name, template, container, config_maps, folder)
        if mounts is None:
            return None  # the ConfigMap is not there yet: the pod waits, as it would in a cluster
        env = self._environment(name, container, secrets, job)
        if env is None:
            return None  # nor is the Secret
        command = [_expand(arg, env) for arg in container["command"] + container.get("args", [])]
        if command[0] == "python":
            command[0] = sys.executable
        for mount_path, local in mounts.items():
            command = [
                local + arg[len(mount_path) :] if arg.startswith(mount_path + "/") else arg
                for arg in command
            ]
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "pod.log").open("ab") as output:
            process = subprocess.Popen(
                command,
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("kubelet: started %s as pid %d", name, process.pid)
        pod = Pod(job_name=name, uid=job["metadata"]["uid"], folder=folder, process=process)
        with contextlib.suppress(KeyError):  # deleted meanwhile: sync stops the pod
            self.cluster.hold_dependents(_plural(job), name)
        self._transition(name, "Created")
        self._transition(name, "Running")
        return pod

    def _mount(
        self,
        name: str,
        template: dict[str, Any],
        container: dict[str, Any],
        config_maps: dict[str, dict[str, Any]],
        folder: Path,
    ) -> dict[str, str] | None:
        """Each volume mount's local folder; None until every ConfigMap it needs exists."""
        volumes = {v["name"]: v for v in template.get("volumes", [])}
        mounts: dict[str, str] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            path = mount["mountPath"]
            if "configMap" in volume:
                config_map = config_maps.get(volume["configMap"]["name"])
                if config_map is None:
                    return None
                local = folder / "volumes" / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
                for key, value in (config_map.get("data") or {}).items():
                    (local / key).write_text(value)
                mounts[path] = str(local)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                host = self.claims.get(claim)
                if host is None:
                    raise ValueError(f"{name}: no PersistentVolumeClaim {claim!r} on this node")
                if str(host) != path:
                    raise ValueError(
                        f"{name}: claim {claim} lives at {host}, pods here must mount it there, not at {path}"
                    )
                host.mkdir(parents=True, exist_ok=True)
            elif "emptyDir" not in volume:
                raise ValueError(
                    f"{name}: volume {mount['name']} of a kind this node does not play"
                )
        return mounts

    def _environment(
        self,
        name: str,
        container: dict[str, Any],
        secrets: dict[str, dict[str, Any]],
        job: dict[str, Any],
    ) -> dict[str, str] | None:
        """The container's environment and the operator's, on top of this host's basics."""
        env = {
            key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ
        }
        env["PYTHONUNBUFFERED"] = "1"
        env[POD_MARKER] = job["metadata"]["uid"]  # inherited by every process of the pod
        if _plural(job) == "trainjobs":
            # What Trainer's torch plugin injects into the runtime's `node` container.
            env.update(
                PET_NNODES="1",
                PET_NPROC_PER_NODE=str(job["spec"]["trainer"].get("numProcPerNode", "1")),
                PET_NODE_RANK="0",
                PET_MASTER_ADDR="127.0.0.1",
                PET_MASTER_PORT=str(_free_port()),
            )
        else:
            # What the Training Operator injects into the `pytorch` container of a Master pod.
            env.update(
                PET_NNODES="1",
                PET_NPROC_PER_NODE=str(job["spec"].get("nprocPerNode", "1")),
                PET_NODE_RANK="0",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(_free_port()),
            )
        # The pod's CPU request, as the container's CPU quota would cap its threads.
        cpus = (container.get("resources") or {}).get("requests", {}).get("cpu")
        if cpus is not None:
            env["OMP_NUM_THREADS"] = str(max(1, int(float(cpus))))
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = _expand(item["value"], env)
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            secret = secrets.get(ref["name"])
            if secret is None:
                return None
            data = secret.get("data") or {}
            if ref["key"] not in data:
                raise ValueError(f"{name}: Secret {ref['name']} has no key {ref['key']!r}")
            env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
        return env

    def _report_exit(self, pod: Pod, job: dict[str, Any]) -> None:
        pod.exit_code = pod.process.returncode
        pod.reported = True
        if pod.exit_code == 0:
            self._transition(pod.job_name, "Succeeded")
            return
        code = pod.exit_code if pod.exit_code >= 0 else 128 - pod.exit_code  # killed by a signal
        with contextlib.suppress(Exception):
            self.cluster.add_pod(job, phase="Failed", terminated_reason="Error", exit_code=code)
        self._transition(
            pod.job_name,
            "Failed",
            reason=f"{job['kind']}Failed",
            message=f"{job['kind']} {pod.job_name} is failed because 1 replica(s) failed.",
        )

    def _terminate(self, pod: Pod) -> None:
        if not pod.alive:
            return
        if pod.terminating_since is None:
            pod.terminating_since = time.monotonic()
            log.info(
                "kubelet: PyTorchJob %s deleted; stopping pid %d", pod.job_name, pod.process.pid
            )
            # The container's main process (torchrun, PID 1 in the pod) gets SIGTERM and passes
            # it on to the trainer; the rest of the group only goes with SIGKILL, as a cgroup.
            with contextlib.suppress(ProcessLookupError):
                pod.process.send_signal(signal.SIGTERM)
        elif time.monotonic() - pod.terminating_since > self.grace_s:
            pod.kill()

    def _transition(self, name: str, condition: str, **details: Any) -> None:
        with contextlib.suppress(KeyError):  # deleted meanwhile: nobody is left to tell
            self.cluster.transition(name, condition, **details)


def _plural(job: dict[str, Any]) -> str:
    return "trainjobs" if job.get("kind") == "TrainJob" else "pytorchjobs"


def _suspended(job: dict[str, Any]) -> bool:
    """Held by a queue until admitted (`spec.runPolicy.suspend`, a TrainJob's `spec.suspend`)."""
    spec = job.get("spec") or {}
    flag = spec.get("suspend") if _plural(job) == "trainjobs" else (spec.get("runPolicy") or {}).get("suspend")
    return flag is True


def _master_pod(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A PyTorchJob's Master pod spec and its `pytorch` container."""
    name = job["metadata"]["name"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    if set(replicas) != {"Master"} or replicas["Master"].get("replicas", 1) != 1:
        raise ValueError(f"{name}: only single-node PyTorchJobs are played, got {sorted(replicas)}")
    template = replicas["Master"]["template"]["spec"]
    (container,) = template["containers"]
    if container["name"] != "pytorch":
        raise ValueError(
            f"{name}: the operator wants the container named pytorch, got {container['name']}"
        )
    return template, container


def _trainjob_pod(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A TrainJob's node pod: the trainer's command, environment and resources, with the
    volumes and mounts its `podSpecOverrides` give the runtime's `node` job and container."""
    name = job["metadata"]["name"]
    trainer = job["spec"]["trainer"]
    if trainer.get("numNodes", 1) != 1:
        raise ValueError(f"{name}: only single-node TrainJobs are played, got {trainer['numNodes']}")
    overrides = [
        o for o in job["spec"].get("podSpecOverrides") or [] if {"name": "node"} in o["targetJobs"]
    ]
    volumes = [v for o in overrides for v in o.get("volumes") or []]
    node = [c for o in overrides for c in o.get("containers") or [] if c["name"] == "node"]
    container = {
        "name": "node",
        "command": list(trainer["command"]) + list(trainer.get("args") or []),
        "env": list(trainer.get("env") or []) + [e for c in node for e in c.get("env") or []],
        "volumeMounts": [m for c in node for m in c.get("volumeMounts") or []],
        "resources": trainer.get("resourcesPerNode") or {},
    }
    return {"volumes": volumes}, container


def _final(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in FINAL_CONDITIONS and c["status"] == "True" for c in conditions)


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion; an unknown variable stays as written, as it does there."""
    return _VARIABLE.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def container_processes(uid: str) -> list[int]:
    """Live processes of the pod `uid`: those whose environment carries its marker."""
    marker = f"{POD_MARKER}={uid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if marker in environ and state != "Z":
            found.append(int(entry.name))
    return found


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
