"""ONNX export with the input normalisation inside the graph, its JSON sidecar, and onnxruntime
as a serving backend.

The graph takes what the preprocessing writes, as float: ``pixels`` (N, 1, S, S) gray levels
0-255, after decode, square pad/crop, resize and CLAHE as the sidecar's ``preprocess`` says;
it returns ``probabilities`` (sigmoid, before calibration), ``logits`` and ``features`` (the
penultimate activations, which the OOD guardrail reads). Calibration and operating points are
per-label numbers in the sidecar, applied after the graph, as the torch path does.
An ensemble exports as one graph per member plus the ensemble's ``ensemble.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr.infer.ensemble import ENSEMBLE_FILE, EnsembleModel
from cxr.models.checkpoint import Checkpoint
from cxr.models.classifier import Classifier

FORMAT = "cxr-onnx/1"
GRAPH_FILE, SIDECAR_FILE = "model.onnx", "model.json"
INPUT, OUTPUTS = "pixels", ("probabilities", "logits", "features")
OPSET = 18


class ExportedClassifier(nn.Module):
    """The classifier behind its own normalisation: gray levels in, (probabilities, logits,
    penultimate features) out."""

    def __init__(self, model: Classifier, mean: float, std: float):
        super().__init__()
        self.model = model
        self.mean, self.std = float(mean), float(std)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (pixels / 255.0 - self.mean) / self.std
        features = self.model.penultimate(x)
        logits = self.model.head.fc(features)
        return torch.sigmoid(logits), logits, features


def sidecar(checkpoint: Checkpoint, dynamic_batch: bool, batch: int) -> dict:
    """What a runtime needs besides the graph: preprocessing, labels, calibration, operating points."""
    meta = checkpoint.meta
    size = meta.image_size
    return {"format": FORMAT, "labels": list(meta.label_names), "image_size": size,
            "input": {"name": INPUT, "shape": ["batch" if dynamic_batch else batch, 1, size, size], "dtype": "float32",
                      "range": [0, 255], "meaning": "gray levels after preprocess, before normalisation"},
            "outputs": {"probabilities": "sigmoid of logits, before calibration", "logits": "per label",
                        "features": "penultimate activations (input of the last linear layer)"},
            "preprocess": {**meta.preprocess, "image_size": size},
            "normalisation_in_graph": {"mean": meta.mean, "std": meta.std, "scale": 255.0},
            "calibration": meta.calibration, "operating_points": meta.operating_points,
            "model": meta.model.model_dump(), "opset": OPSET}


def export_checkpoint(checkpoint: Checkpoint, folder: str | Path, dynamic_batch: bool = True, batch: int = 1) -> Path:
    """Write ``model.onnx`` and its ``model.json`` sidecar into ``folder``; returns the graph's path.
    ``dynamic_batch`` leaves the batch dimension free, else it is fixed to ``batch``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = checkpoint.meta.image_size
    wrapper = ExportedClassifier(checkpoint.build_model(), checkpoint.meta.mean, checkpoint.meta.std).eval()
    example = torch.full((max(batch, 2) if dynamic_batch else batch, 1, size, size), 128.0)
    shapes = {"pixels": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    program = torch.onnx.export(wrapper, (example,), input_names=[INPUT], output_names=list(OUTPUTS),
                                dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, verbose=False)
    program.save(str(folder / GRAPH_FILE))
    (folder / SIDECAR_FILE).write_text(json.dumps(sidecar(checkpoint, dynamic_batch, batch), indent=2))
    return folder / GRAPH_FILE


def export_model(model: Checkpoint | EnsembleModel, folder: str | Path, dynamic_batch: bool = True,
                 batch: int = 1) -> Path:
    """A checkpoint as one graph, or an ensemble as ``members/<name>/`` graphs plus ``ensemble.json``
    (member order, weights, labels, operating points); returns ``folder``."""
    folder = Path(folder)
    if isinstance(model, Checkpoint):
        export_checkpoint(model, folder, dynamic_batch, batch)
        return folder
    for name, member in model.members.items():
        export_checkpoint(member, folder / "members" / name, dynamic_batch, batch)
    folder.joinpath(ENSEMBLE_FILE).write_text(json.dumps(
        {"format": FORMAT, "members": list(model.members), "weights": model.weights.tolist(),
         "weighting": model.weighting, "label_names": model.label_names,
         "operating_points": model.operating_points}, indent=2))
    return folder


def session(path: str | Path, threads: int = 0):
    """An onnxruntime session on the graph at ``path`` (CUDA when onnxruntime has it, else CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), options, providers=providers)


def run_graph(graph, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's outputs by name for float32 gray levels (N, 1, S, S) or uint8 images (N, S, S)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = pixels[:, None]
    return dict(zip(OUTPUTS, graph.run(list(OUTPUTS), {INPUT: pixels.astype(np.float32, copy=False)})))


class OnnxNetwork(nn.Module):
    """An exported graph where the torch network was: it takes the normalised input that
    ``predict_proba`` and ``penultimate_features`` give any model and returns logits (or
    ``penultimate`` features), handing the graph the gray levels back, since it normalises itself."""

    def __init__(self, path: str | Path, mean: float, std: float):
        super().__init__()
        self.graph = session(path)
        self.mean, self.std = float(mean), float(std)

    def _outputs(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        pixels = (x.detach().float().cpu() * self.std + self.mean) * 255.0
        return run_graph(self.graph, pixels.numpy())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._outputs(x)["logits"]).to(x.device)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._outputs(x)["features"]).to(x.device)


@dataclass
class OnnxCheckpoint(Checkpoint):
    """A checkpoint whose inference runs its exported graph on onnxruntime; guardrail tensors,
    calibration and operating points stay the checkpoint's."""

    graph_path: str = ""

    def inference_model(self) -> OnnxNetwork:
        if self._inference is None:
            self._inference = OnnxNetwork(self.graph_path, self.meta.mean, self.meta.std)
        return self._inference


def onnx_backed(model: Checkpoint | EnsembleModel, folder: str | Path) -> Checkpoint | EnsembleModel:
    """``model`` served through the graphs ``export_model`` wrote to ``folder``."""
    folder = Path(folder)
    if isinstance(model, Checkpoint):
        return OnnxCheckpoint(model.state_dict, model.meta, graph_path=str(folder / GRAPH_FILE))
    members = {name: OnnxCheckpoint(m.state_dict, m.meta, graph_path=str(folder / "members" / name / GRAPH_FILE))
               for name, m in model.members.items()}
    return EnsembleModel(members, model.weights, model.weighting, model.operating_points)
