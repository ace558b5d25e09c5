"""configs/schedule.yaml compiles for a Kubernetes stack without a cluster: the cron schedule,
GPU resources, node selector, tolerations, shared-memory volume and CUDA image settings land
on the right steps. configs/nih_full.yaml compiles too, its finetune step to a 2 x 4 GPU
PyTorchJob. The CUDA Dockerfile passes hadolint."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

GPU_STEPS = ("finetune", "tta_predict_val", "tta_predict_proxy", "tta_predict_test", "robustness", "fit_guardrails")


def compile_config(config: Path):
    """(snapshot, schedule) of the training pipeline with ``config`` on the active stack."""
    from pipelines.training import training_pipeline

    pipeline = training_pipeline.with_options(config_path=str(config))
    pipeline.prepare()
    snapshot, schedule, _ = pipeline._compile(config_path=str(config))
    return snapshot, schedule


@pytest.fixture(scope="module")
def cluster_stack():
    """A Kubernetes stack (no cluster behind it) active for the module's tests."""
    from zenml.client import Client
    from zenml.enums import StackComponentType
    from zenml.utils import source_utils

    source_utils.set_custom_source_root(str(REPO_ROOT))
    client = Client()
    components = {
        StackComponentType.ORCHESTRATOR: ("cxr_k8s_test", "kubernetes",
                                          {"kubernetes_context": "kind-cxr", "kubernetes_namespace": "cxr"}),
        StackComponentType.ARTIFACT_STORE: ("cxr_store_test", "local", {}),
        StackComponentType.CONTAINER_REGISTRY: ("cxr_registry_test", "default", {"uri": "registry.example.org/cxr"}),
        StackComponentType.EXPERIMENT_TRACKER: ("cxr_mlflow_remote_test", "mlflow",
                                                {"tracking_uri": "https://mlflow.example.org",
                                                 "tracking_username": "cxr", "tracking_password": "unused"}),
    }
    for kind, (name, flavor, config) in components.items():
        client.create_stack_component(name=name, flavor=flavor, component_type=kind, configuration=config)
    previous = client.active_stack_model.name
    client.create_stack(name="cxr_cluster_test", components={k: [v[0]] for k, v in components.items()})
    client.activate_stack("cxr_cluster_test")
    yield
    client.activate_stack(previous)


@pytest.fixture(scope="module")
def snapshot(cluster_stack):
    return compile_config(REPO_ROOT / "configs" / "schedule.yaml")


def as_dict(value) -> dict:
    return value if isinstance(value, dict) else value.model_dump(exclude_unset=True)


def pod_settings(settings: dict):
    """The Kubernetes pod settings among compiled settings (keyed ``orchestrator:<name>``)."""
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    (orchestrator,) = [as_dict(v) for k, v in settings.items() if k.startswith("orchestrator")]
    return KubernetesPodSettings.model_validate(orchestrator.get("pod_settings", {}))


def test_cron_schedule(snapshot):
    _, schedule = snapshot
    assert schedule.cron_expression == "0 3 * * 1" and schedule.name == "cxr-weekly-retrain"


def test_gpu_steps_get_resources_node_selector_shm_and_the_cuda_image(snapshot):
    """finetune asks for one GPU per data-parallel process; TTA steps for one."""
    compiled, _ = snapshot
    processes = compiled.step_configurations["finetune"].config.parameters["train"]["processes"]
    for name in GPU_STEPS:
        settings = compiled.step_configurations[name].config.settings
        assert as_dict(settings["resources"])["gpu_count"] == (processes if name == "finetune" else 1), name
        assert as_dict(settings["docker"])["dockerfile"] == "docker/Dockerfile.cuda", name
        pod = pod_settings(settings)
        assert pod.node_selectors == {"nvidia.com/gpu.present": "true"}, name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod.tolerations
        shm = next(v for v in pod.volumes if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod.volume_mounts


def test_gpu_steps_retry_so_a_preempted_pod_resumes(snapshot):
    compiled, _ = snapshot
    for name in GPU_STEPS:
        retry = compiled.step_configurations[name].config.retry
        assert (retry.max_retries, retry.delay, retry.backoff) == (3, 60, 2), name
    assert compiled.step_configurations["ingest"].config.retry is None


def test_cpu_steps_stay_off_gpu_nodes(snapshot):
    compiled, _ = snapshot
    for name in ("ingest", "split_dataset", "preprocess_images", "evaluate", "promote_model"):
        settings = compiled.step_configurations[name].config.settings
        assert not as_dict(settings.get("resources", {})).get("gpu_count"), name
        pod = pod_settings(settings)
        assert not pod.node_selectors and pod.volume_mounts == [{"name": "cxr-data", "mountPath": "/data"}], name
    assert compiled.pipeline_configuration.model.name == "cxr-pneumonia"


def test_default_config_marks_the_same_gpu_steps_and_compiles_locally():
    from pipelines import runner as cli

    cli.setup_stack()
    compiled, schedule = compile_config(REPO_ROOT / "zenml_config.yaml")
    assert schedule is None
    for name in GPU_STEPS + ("adapt_to_target",):
        settings = compiled.step_configurations[name].config.settings
        assert as_dict(settings["resources"])["gpu_count"] == 1
        assert as_dict(settings["docker"])["dockerfile"] == "docker/Dockerfile.cuda"
    assert "resources" not in compiled.step_configurations["preprocess_images"].config.settings


def test_cuda_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(REPO_ROOT / ".venv" / "bin" / "hadolint"))
    result = subprocess.run([hadolint, "--config", str(REPO_ROOT / "docker" / ".hadolint.yaml"),
                             str(REPO_ROOT / "docker" / "Dockerfile.cuda")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr



def test_the_full_nih_schedule_compiles_to_a_2x4_gpu_pytorchjob(cluster_stack):
    from cxr.train.cluster import pytorch_job
    from cxr.train.config import TrainConfig

    snapshot, schedule = compile_config(REPO_ROOT / "configs" / "nih_full.yaml")
    assert schedule.cron_expression == "0 2 * * 6"
    finetune = snapshot.step_configurations["finetune"].config
    train = TrainConfig.model_validate(finetune.parameters["train"])
    cluster = train.cluster.model_copy(update={"image": "registry.example.org/cxr:finetune"})
    job = pytorch_job("cxr-finetune-0", "/data/scratch/cxr-finetune-0", train.nodes, train.processes, cluster)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert job["spec"]["nprocPerNode"] == "4" and {k: v["replicas"] for k, v in replicas.items()} == {"Master": 1,
                                                                                                        "Worker": 1}
    pod = replicas["Worker"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": 4}
    assert {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]["sizeLimit"] == "32Gi"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # the finetune pod itself only waits: it asks for no GPU
    assert not as_dict(finetune.settings["resources"]).get("gpu_count")
