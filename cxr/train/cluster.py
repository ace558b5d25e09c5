"""Multi-node data-parallel fine-tuning: ``train.nodes`` pods x ``train.processes`` GPUs as one
Kubeflow ``PyTorchJob`` (kubeflow.org/v1, static rendezvous: one Master, ``nodes - 1`` Workers).

The finetune step writes the job folder (sets, configs) to a volume that it and the job's pods
mount (``cluster.shared_dir``, a ReadWriteMany claim), creates the PyTorchJob and waits for it.
The Training Operator starts the pods and sets torchrun's rendezvous (``PET_NNODES``,
``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``, ``PET_NPROC_PER_NODE``), so each
pod runs the same flagless ``torchrun`` (``cxr.train.distributed.worker_command``); rank 0
writes the result into the folder, which the step reads back. No rendezvous code of our own.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from cxr.data.imageset import ImageSet
from cxr.models.checkpoint import BackboneCheckpoint
from cxr.models.classifier import ModelConfig
from cxr.train.config import ClusterConfig, TrainConfig
from cxr.train.distributed import read_result, worker_command, write_job
from cxr.train.loop import FitResult, check_fit_inputs
from cxr.train.resume import MANIFEST, ResumeStore

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
CONTAINER = "pytorch"  # the container name the Training Operator requires


def job_name() -> str:
    """A DNS-1035 name for a new job."""
    return f"cxr-finetune-{uuid.uuid4().hex[:10]}"


def pod_template(folder: str, processes: int, cluster: ClusterConfig) -> dict:
    """One node's pod: the worker command, its GPUs, the shared volume and a RAM-backed /dev/shm."""
    gpus = processes if cluster.gpus_per_node is None else cluster.gpus_per_node
    limits = {"cpu": cluster.cpu, "memory": cluster.memory} | ({"nvidia.com/gpu": gpus} if gpus else {})
    container = {
        "name": CONTAINER, "image": cluster.image, "command": worker_command(folder),
        "env": [{"name": k, "value": v} for k, v in cluster.environment.items()],
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": [{"name": "cxr-data", "mountPath": cluster.mount_path},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    return {"spec": {
        "containers": [container], "nodeSelector": dict(cluster.node_selector),
        "tolerations": list(cluster.tolerations),
        "volumes": [{"name": "cxr-data", "persistentVolumeClaim": {"claimName": cluster.volume_claim}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}}],
    }}


def pytorch_job(name: str, folder: str, nodes: int, processes: int, cluster: ClusterConfig) -> dict:
    """The PyTorchJob of ``nodes`` x ``processes``: a Master and ``nodes - 1`` Workers of one template,
    never restarted in place (a failure fails the job and the step's retry policy decides)."""
    if not cluster.image:
        raise ValueError("train.cluster.image is unset and no container build supplied one: name the CUDA image "
                         "that has this project installed")
    template = pod_template(folder, processes, cluster)
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if nodes > 1:
        replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": "Never", "template": template}
    run_policy = {"cleanPodPolicy": "Running", "backoffLimit": 0, "ttlSecondsAfterFinished": cluster.ttl_seconds,
                  "activeDeadlineSeconds": int(cluster.timeout_hours * 3600)}
    if cluster.gang_scheduler:
        run_policy["schedulingPolicy"] = {"minAvailable": nodes}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PyTorchJob",
            "metadata": {"name": name, "namespace": cluster.namespace, "labels": {"app": "cxr-finetune"}},
            "spec": {"nprocPerNode": str(processes), "runPolicy": run_policy, "pytorchReplicaSpecs": replicas}}


class JobFailed(RuntimeError):
    """The PyTorchJob ended in its Failed condition (its pods are kept for their logs)."""


def job_state(job: dict) -> str | None:
    """``Succeeded`` or ``Failed`` once the job has ended (its condition's message appended), else None."""
    for condition in job.get("status", {}).get("conditions", []):
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return condition["type"] + (f": {condition['message']}" if condition.get("message") else "")
    return None


def run_job(api, job: dict, poll_seconds: float, timeout_seconds: float,
            sleep: Callable[[float], None] = time.sleep) -> str:
    """Create ``job`` through ``api`` (a kubernetes ``CustomObjectsApi``), wait until it ends, return its
    final state; raise if it failed or ran past ``timeout_seconds`` (then it is deleted)."""
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    waited = 0.0
    while (state := job_state(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))) is None:
        if waited >= timeout_seconds:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            raise TimeoutError(f"PyTorchJob {namespace}/{name} did not end within {timeout_seconds:.0f} s; deleted it")
        sleep(poll_seconds)
        waited += poll_seconds
    if state.startswith("Failed"):
        raise JobFailed(f"PyTorchJob {namespace}/{name} failed ({state}); "
                           f"its pods' logs: kubectl logs -n {namespace} -l training.kubeflow.org/job-name={name}")
    return state


def delete_job(api, job: dict) -> None:
    """Delete ``job`` if it exists (a job never created, or already deleted, is fine)."""
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, job["metadata"]["namespace"], PLURAL,
                                            job["metadata"]["name"])
    except ApiException as error:
        if error.status != 404:
            raise


def custom_objects_api():
    """A ``CustomObjectsApi`` from the pod's service account, else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def fit_multi_node(train: ImageSet, val: ImageSet, model_cfg: ModelConfig, cfg: TrainConfig, preprocess: dict | None = None,
                   progress: bool = True, on_epoch: Callable[[dict], None] | None = None,
                   backbone_init: BackboneCheckpoint | None = None, proxy: ImageSet | None = None,
                   resume=None, api=None) -> FitResult:
    """``fit`` over ``cfg.nodes`` x ``cfg.processes`` GPUs as a PyTorchJob; same arguments and result.

    With ``resume`` every process keeps its state on the shared volume (``shared_resume``), copied
    back into ``resume`` when the job ends, so a re-run (a retried step) goes on from the last epoch.
    """
    check_fit_inputs(train, val, proxy, cfg)
    cluster, name = cfg.cluster, job_name()
    folder = Path(cluster.shared_dir) / name
    job = pytorch_job(name, str(folder), cfg.nodes, cfg.processes, cluster)
    api = api or custom_objects_api()
    shared = None if resume is None else shared_resume(resume, cluster.shared_dir)
    folder.mkdir(parents=True)
    try:
        write_job(folder, train, val, model_cfg, cfg, preprocess, progress, backbone_init, proxy, shared)
        try:
            run_job(api, job, cluster.poll_seconds, cluster.timeout_hours * 3600)
        except JobFailed:
            raise  # its pods are kept for their logs
        except BaseException:  # an interrupted or broken-off wait must not leave GPUs on a job nobody reads
            delete_job(api, job)
            raise
        finally:
            if shared is not None:
                keep_resume(shared, resume)
        return read_result(folder, on_epoch)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def shared_resume(resume: ResumeStore, shared_dir: str) -> ResumeStore:
    """The nodes' resume store on the shared volume (``resume-<fingerprint>``), seeded with the state
    ``resume`` holds (pulled from where it is kept) where the volume has none."""
    shared = ResumeStore(Path(shared_dir) / f"resume-{resume.fingerprint[:32]}", resume.fingerprint)
    resume.pull()
    if resume.folder.is_dir() and not shared.folder.is_dir():
        shutil.copytree(resume.folder, shared.folder)
    return shared


def keep_resume(shared: ResumeStore, resume: ResumeStore) -> None:
    """Copy the nodes' state back into ``resume`` and push it where it is kept; the processes of a
    finished job cleared theirs, so ``resume`` is then cleared and the volume's folder removed."""
    shutil.rmtree(resume.folder, ignore_errors=True)
    if shared.folder.is_dir() and any(shared.folder.rglob(MANIFEST)):
        shutil.copytree(shared.folder, resume.folder)
    else:
        shared.clear()
    resume.push()
