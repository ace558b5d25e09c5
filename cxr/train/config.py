"""Supervised fine-tune knobs (``parameters.train`` in YAML), validated before any work."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cxr.train.augment import AugmentConfig
from cxr.train.averaging import AveragingName
from cxr.train.losses import LossName
from cxr.train.optim import OptimizerName, ScheduleName


class ClusterConfig(BaseModel):
    """Where a multi-node fine-tune runs (``parameters.train.cluster``)."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="the CUDA image with this project installed; None: the image "
                                                "the finetune step itself runs in (the run's container build)")
    namespace: str = "cxr"
    volume_claim: str = Field("cxr-data", description="ReadWriteMany claim mounted in the step pod and every node")
    mount_path: str = Field("/data", description="where the claim is mounted")
    shared_dir: str = Field("/data/scratch", description="job folders go here; must lie under mount_path")
    gpus_per_node: int | None = Field(None, ge=0, description="GPUs per node; None: train.processes")
    cpu: str = "16"
    memory: str = "64Gi"
    shm_size: str = Field("16Gi", description="/dev/shm per node (NCCL and loaders; the default 64 MB is too small)")
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict] = Field(default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                             "effect": "NoSchedule"}])
    environment: dict[str, str] = Field(default_factory=lambda: {"CXR_DATA_DIR": "/data"})
    gang_scheduler: str | None = Field(None, description="e.g. volcano: start all nodes or none (the job's "
                                       "minAvailable; the Training Operator runs with --gang-scheduler-name "
                                       "set to it and names the scheduler in the pods itself)")
    poll_seconds: float = Field(15.0, gt=0)
    timeout_hours: float = Field(48.0, gt=0)
    ttl_seconds: int = Field(3600, ge=0, description="finished job kept this long for its logs")


class TrainConfig(BaseModel):
    """Optimisation, loss, sampling, mixing, schedule and stopping for ``fit``."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: OptimizerName = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD/RMSprop momentum")
    scheduler: ScheduleName = "onecycle"
    restart_epochs: int = Field(5, ge=1, description="cosine_restarts: epochs of the first cycle")
    plateau_patience: int = Field(2, ge=0)
    loss: LossName = "bce"
    focal_alpha: float | None = Field(0.25, gt=0, lt=1)
    focal_gamma: float = Field(2.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    samples_per_epoch: int | None = Field(None, ge=2, description="rows drawn per epoch (repeats past the set "
                                          "size); gives a small labelled set enough steps per val check")
    negative_keep_fraction: float = Field(1.0, gt=0, le=1, description="share of all-negative images (no known "
                                          "positive) drawn afresh each epoch; an NIH reference kept 0.2")
    balanced_sampler: bool = Field(False, description="WeightedRandomSampler by inverse class frequency")
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    mix_prob: float = Field(0.5, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; None turns it off")
    early_stopping_patience: int | None = Field(None, ge=1, description="epochs without a gain in the "
                                                "select_on split's AUC")
    select_on: str = Field("val", pattern="^(val|proxy)$", description="split whose mean AUC picks the best "
                           "epoch and drives early stopping: val, or proxy (needs split.proxy)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    averaging: AveragingName = Field("none", description="weight averaging whose weights are validated and "
                                     "checkpointed: none, ema (after every step) or swa (last swa_epochs epochs)")
    ema_decay: float = Field(0.998, gt=0, lt=1, description="ema: decay reached after timm's warm-up")
    ema_warmup: bool = Field(True, description="ema: decay grows from 0 (short runs average their late steps)")
    swa_epochs: int = Field(3, ge=1, description="swa: epochs averaged, counted back from the last")
    amp: bool = Field(True, description="mixed precision on CUDA")
    cpu_bf16: bool = Field(False, description="bf16 autocast on a CPU with native bf16 (AVX512-BF16/AMX); "
                           "ignored with a warning elsewhere")
    channels_last: bool | None = Field(None, description="channels_last memory format; None: on CUDA only")
    compile: bool = Field(False, description="torch.compile the training model")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    processes: int = Field(1, ge=1, description="data-parallel processes (one per GPU) under torchrun and "
                           "Accelerate; batch_size is per process; 1 trains in this process")
    nodes: int = Field(1, ge=1, description="data-parallel nodes (pods of train.processes GPUs each) as one "
                       "Kubeflow PyTorchJob; more than 1 needs train.cluster")
    cluster: ClusterConfig | None = Field(None, description="the cluster a multi-node fine-tune runs on")
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.augment.scale_min > self.augment.scale_max:
            raise ValueError("augment.scale_min must not exceed augment.scale_max")
        if self.averaging == "swa" and self.early_stopping_patience:
            raise ValueError("train.averaging 'swa' averages the last swa_epochs epochs; early stopping "
                             "would end the run before them: unset train.early_stopping_patience")
        if self.nodes > 1 and self.cluster is None:
            raise ValueError(f"train.nodes={self.nodes} runs as a PyTorchJob: set train.cluster (image, volume_claim, ...)")
        if self.cluster is not None and not Path(self.cluster.shared_dir).is_relative_to(self.cluster.mount_path):
            raise ValueError(f"train.cluster.shared_dir {self.cluster.shared_dir!r} must lie under its mount_path "
                             f"{self.cluster.mount_path!r}: every node reads the job folder there")
        gpus = None if self.cluster is None else self.cluster.gpus_per_node
        if gpus and gpus < self.processes:
            raise ValueError(f"train.processes={self.processes} runs one process per GPU, but "
                             f"train.cluster.gpus_per_node is {gpus}: raise it or lower processes")
        if (self.processes > 1 or self.nodes > 1) and ":" in self.device:
            raise ValueError(f"train.processes={self.processes} places one process per GPU itself; "
                             f"device must be auto, cuda or cpu, not {self.device!r}")
        return self
