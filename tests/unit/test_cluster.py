"""Multi-node fine-tuning as a Kubeflow PyTorchJob: the job spec for 2 nodes x 4 GPUs, the wait on its
conditions, and on CPU two "nodes" of one Gloo process each started exactly as the Training
Operator starts the pods (the spec's command, the PET_* rendezvous variables it injects)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from cxr.train.cluster import job_state, pytorch_job, run_job
from cxr.train.config import ClusterConfig, TrainConfig
from cxr.train.distributed import read_result, write_job
from cxr.train.loop import fit
from cxr.train.resume import ResumeStore
from cxr.models.classifier import ModelConfig
from tests.conftest import REPO_ROOT
from tests.helpers import free_port

CLUSTER = {"image": "registry.example/cxr:abc", "volume_claim": "cxr-data", "shared_dir": "/data/scratch"}


def test_the_scheduled_multi_node_config_compiles_to_a_2x4_pytorchjob():
    params = yaml.safe_load((REPO_ROOT / "configs" / "nih_full.yaml").read_text())["parameters"]
    train = TrainConfig(**params["train"])
    assert (train.nodes, train.processes) == (2, 4)
    cluster = train.cluster.model_copy(update={"image": "registry.example/cxr:abc"})
    job = pytorch_job("cxr-finetune-1", "/data/scratch/cxr-finetune-1", train.nodes, train.processes, cluster)
    spec = job["spec"]
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert spec["nprocPerNode"] == "4"
    replicas = spec["pytorchReplicaSpecs"]
    assert {k: v["replicas"] for k, v in replicas.items()} == {"Master": 1, "Worker": 1}
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == "registry.example/cxr:abc"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        # no rendezvous flags of our own: torchrun takes nodes, rank and master from the operator's PET_* variables
        assert container["command"][:3] == ["python", "-m", "torch.distributed.run"]
        assert not any(arg.startswith(("--nnodes", "--standalone", "--rdzv", "--master")) for arg in container["command"])
        assert container["command"][-1] == "/data/scratch/cxr-finetune-1"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": cluster.shm_size}
        assert volumes["cxr-data"]["persistentVolumeClaim"]["claimName"] == cluster.volume_claim
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/dev/shm", cluster.mount_path}
        assert replica["restartPolicy"] == "Never"
    assert spec["runPolicy"]["backoffLimit"] == 0


def test_multi_node_needs_a_cluster_whose_job_folder_every_node_mounts():
    with pytest.raises(ValueError, match="set train.cluster"):
        TrainConfig(nodes=2)
    with pytest.raises(ValueError, match="must lie under its mount_path"):
        TrainConfig(nodes=2, cluster=CLUSTER | {"shared_dir": "/tmp/jobs"})
    with pytest.raises(ValueError, match="one process per GPU"):
        TrainConfig(nodes=2, device="cuda:1", cluster=CLUSTER)
    with pytest.raises(ValueError, match="gpus_per_node is 2"):
        TrainConfig(nodes=2, processes=4, cluster=CLUSTER | {"gpus_per_node": 2})


class FakeApi:
    """CustomObjectsApi stand-in: the job's conditions over successive reads."""

    def __init__(self, states: list[list[dict]]):
        self.states, self.created, self.deleted = states, [], []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body["metadata"]["name"]))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return {"status": {"conditions": self.states.pop(0) if len(self.states) > 1 else self.states[0]}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)


def job() -> dict:
    return pytorch_job("cxr-finetune-2", "/data/scratch/x", 2, 4, ClusterConfig(**CLUSTER))


def test_the_wait_ends_on_the_jobs_final_condition():
    running = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]
    api = FakeApi([running, running, running + [{"type": "Succeeded", "status": "True"}]])
    slept = []
    assert run_job(api, job(), 15, 3600, slept.append) == "Succeeded"
    assert api.created == [("kubeflow.org", "v1", "cxr", "pytorchjobs", "cxr-finetune-2")] and slept == [15, 15]
    failed = FakeApi([[{"type": "Failed", "status": "True", "message": "worker-0 OOMKilled"}]])
    with pytest.raises(RuntimeError, match="failed .*OOMKilled.*kubectl logs -n cxr"):
        run_job(failed, job(), 15, 3600, slept.append)
    stuck = FakeApi([running])
    with pytest.raises(TimeoutError, match="deleted it"):
        run_job(stuck, job(), 15, 60, lambda s: None)
    assert stuck.deleted == ["cxr-finetune-2"]
    assert job_state({"status": {"conditions": [{"type": "Succeeded", "status": "False"}]}}) is None


class BrokenApi(FakeApi):
    """The API answers the create, then the connection drops while the step waits."""

    def get_namespaced_custom_object(self, *args):
        raise ConnectionError("API server unreachable")


def test_a_wait_that_breaks_off_deletes_the_job_it_started_and_a_failed_job_is_kept(synthetic_split, tmp_path):
    from cxr.train.cluster import JobFailed, fit_multi_node

    train, val = synthetic_split
    cfg = TrainConfig(nodes=2, epochs=1, cluster=CLUSTER | {"shared_dir": str(tmp_path / "jobs"),
                                                           "mount_path": str(tmp_path)})
    broken = BrokenApi([[]])
    with pytest.raises(ConnectionError):
        fit_multi_node(train, val, ModelConfig(backbone="resnet10t"), cfg, api=broken)
    assert broken.deleted == [broken.created[0][-1]] and not any((tmp_path / "jobs").iterdir())
    failed = FakeApi([[{"type": "Failed", "status": "True"}]])
    with pytest.raises(JobFailed):
        fit_multi_node(train, val, ModelConfig(backbone="resnet10t"), cfg, api=failed)
    assert failed.deleted == []


class SavingApi(FakeApi):
    """The job's processes find the seeded state in their resume folder, save epoch 2 there, then fail."""

    def __init__(self, jobs: Path):
        super().__init__([[{"type": "Failed", "status": "True"}]])
        self.jobs, self.seen = jobs, None

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        super().create_namespaced_custom_object(group, version, namespace, plural, body)
        config = json.loads((self.jobs / body["metadata"]["name"] / "config.json").read_text())
        folder, fingerprint = config["resume"]
        self.seen = (folder, ResumeStore(folder, fingerprint).rank(0).load())
        ResumeStore(folder, fingerprint).rank(1).save({"epoch": 2})


def test_a_failed_multi_node_job_keeps_every_process_state_for_the_retry(synthetic_split, tmp_path):
    from cxr.train.cluster import JobFailed, fit_multi_node, keep_resume

    train, val = synthetic_split
    jobs = tmp_path / "jobs"
    cfg = TrainConfig(nodes=2, epochs=3, cluster=CLUSTER | {"shared_dir": str(jobs), "mount_path": str(tmp_path)})
    resume = ResumeStore(tmp_path / "store", "a1b2c3")
    resume.rank(0).save({"epoch": 1})
    api = SavingApi(jobs)
    with pytest.raises(JobFailed):
        fit_multi_node(train, val, ModelConfig(backbone="resnet10t"), cfg, api=api, resume=resume)
    folder, seeded = api.seen
    assert Path(folder).parent == jobs and seeded == {"epoch": 1}  # the nodes read the step's state
    assert resume.rank(0).load() == {"epoch": 1} and resume.rank(1).load() == {"epoch": 2}  # and it came back
    shared = ResumeStore(folder, "a1b2c3")
    shared.rank(0).clear(), shared.rank(1).clear()  # what a finished job's processes do
    keep_resume(shared, resume)
    assert not resume.folder.exists() and not Path(folder).exists()


def operator_env(job: dict, node_rank: int, port: int) -> dict:
    """The rendezvous variables the Training Operator sets in a static PyTorchJob's pods."""
    replicas = job["spec"]["pytorchReplicaSpecs"]
    return {"PET_NNODES": str(sum(r["replicas"] for r in replicas.values())), "PET_NODE_RANK": str(node_rank),
            "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"], "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port), "PYTHONUNBUFFERED": "1"}


def test_two_nodes_started_as_the_operator_starts_them_train_like_one_process(synthetic_split):
    train, val = synthetic_split
    model, cfg = ModelConfig(backbone="resnet10t"), dict(device="cpu", batch_size=16, lr=3e-3, num_threads=1, epochs=3)
    single = fit(train, val, model, TrainConfig(**cfg), progress=False)
    two = TrainConfig(nodes=2, processes=1, cluster=CLUSTER, **cfg)
    with tempfile.TemporaryDirectory(prefix="cxr-pytorchjob-") as scratch:
        folder = Path(scratch)
        write_job(folder, train, val, model, two, None, False, None, None, None)
        spec = pytorch_job("cxr-finetune-3", str(folder), two.nodes, two.processes, two.cluster)
        port = free_port()
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
        nodes = []
        for rank, replica in enumerate(["Master", "Worker"]):
            (container,) = spec["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["containers"]
            env = os.environ | {e["name"]: e["value"] for e in container["env"]} | operator_env(spec, rank, port)
            nodes.append(subprocess.Popen(container["command"], env=env | {"PATH": path, "CXR_DATA_DIR": os.environ.get(
                "CXR_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))}))
        assert [node.wait(timeout=600) for node in nodes] == [0, 0]
        result = read_result(folder, None)
    history = result.history
    seen = history["train_images_per_s"] * history["train_seconds"]
    assert seen.round().tolist() == [len(train) // 2 * 2] * 3  # each node trained on its half each epoch
    assert history["val_auc"].max() > 0.9
    assert result.checkpoint.meta.val_metrics["val_loss"] == pytest.approx(
        single.checkpoint.meta.val_metrics["val_loss"], abs=0.15)
