"""DICOM end to end through ZenML: a Kermany subset re-encoded as DICOM (lossless JPEG family, RLE
and uncompressed; MONOCHROME1 and 2; 8 to 16 bits; window and VOI LUT tags) full of
distinctive patient data trains, registers and predicts like the JPEGs it came from, and none
of that patient data reaches the ZenML store, the MLflow store or an output file."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from tests.dicom_files import PHI, write_dicom
from tests.pipeline.conftest import FAST_INTERVALS, output, run_and_fetch, statuses, write_yaml

pytestmark = pytest.mark.slow

NAME = "cxr-dicom-pipeline-test"
KERMANY_PATIENTS = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"  # as zenml_config.yaml
PER_CLASS, TEST_IMAGES = 40, 12
STORAGE = [("explicit", dict(bits=8, window=True)), ("rle", dict(bits=12, window=True)),
           ("jpeg_lossless", dict(bits=16, monochrome1=True, window=True)),
           ("jpeg_ls", dict(bits=12, signed=True, window=True)), ("jpeg2000", dict(bits=12, voi_lut=True)),
           ("explicit", dict(bits=12, slope=2.0, intercept=-1024.0, window=True))]
SETTINGS = {"split": {"val_fraction": 0.3, "seed": 0}, "preprocess": {"image_size": 48, "clahe": True},
            "model": {"backbone": "resnet10t"}, "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3},
            "tta_views": ["original"]}


def encoded(source: Path, target: Path, patient: str, k: int) -> None:
    """``source`` (an 8-bit JPEG) as a DICOM at ``target`` in the k-th storage of ``STORAGE``."""
    import cv2

    syntax, storage = STORAGE[k % len(STORAGE)]
    image = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    write_dicom(target, image, syntax, tags={"PatientID": f"{PHI['PatientID']}-{patient}"}, **storage)


@pytest.fixture(scope="module")
def root(tmp_path_factory, real_data_dir) -> Path:
    """JPEG and DICOM versions of the same Kermany train subset, and a DICOM test folder."""
    import shutil

    root = tmp_path_factory.mktemp("dicom")
    kermany, counter = real_data_dir / "kermany-pneumonia-224", itertools.count()
    for name in ("NORMAL", "PNEUMONIA"):
        (root / "jpeg" / name).mkdir(parents=True)
        for source in sorted((kermany / "train" / name).iterdir())[:PER_CLASS]:
            shutil.copy(source, root / "jpeg" / name / source.name)
            patient = re.match(KERMANY_PATIENTS, source.name).group(1)
            encoded(source, root / "dicom" / name / f"{source.stem}.dcm", patient, next(counter))
    for k, source in enumerate(sorted((kermany / "test" / "images").iterdir())[:TEST_IMAGES]):
        encoded(source, root / "dicom_test" / f"IM{k:04d}", f"test{k}", k)  # no extension: found by preamble
    return root


@pytest.fixture(scope="module")
def salt():
    previous = os.environ.get("CXR_ID_SALT")
    os.environ["CXR_ID_SALT"] = "pipeline-test-site-secret"
    yield
    if previous is None:
        del os.environ["CXR_ID_SALT"]
    else:
        os.environ["CXR_ID_SALT"] = previous


@pytest.fixture(scope="module")
def runs(root: Path, salt):
    train = write_yaml(root / "train.yaml", {"parameters": {**FAST_INTERVALS,
        **SETTINGS, "registered_model_name": NAME, "submission_path": str(root / "outputs" / "submission.csv"),
        "data": {"source": "folders", "path": str(root / "dicom"), "negative_class": "NORMAL"},
        "test_data": {"source": "images", "path": str(root / "dicom_test"), "label_names": ["pneumonia"]}}})
    trained = run_and_fetch("train", train, "dicom-train")
    infer = write_yaml(root / "infer.yaml", {"parameters": {
        "data": {"source": "images", "path": str(root / "dicom_test")}, "registered_model_name": NAME,
        "version": 1, "output_path": str(root / "outputs" / "predictions.csv")}})
    return trained, run_and_fetch("infer", infer, "dicom-infer")


def test_dicoms_train_register_and_predict_like_their_jpegs(runs, root: Path):
    from cxr.data.imageset import pixel_digest
    from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
    from cxr.data.sources import read_class_folders
    from cxr.infer.tta import predict_imageset
    from cxr.metrics.classification import mean_auc
    from cxr.models.classifier import ModelConfig
    from cxr.train.config import TrainConfig
    from cxr.train.loop import fit

    trained, inferred = runs
    assert set(statuses(trained).values()) <= {"completed"} and set(statuses(inferred).values()) <= {"completed"}
    dicom = output(trained, "preprocess_images", "decoded_images")
    jpeg = preprocess_imageset(read_class_folders(root / "jpeg", "NORMAL", KERMANY_PATIENTS),
                               PreprocessConfig(**SETTINGS["preprocess"]), progress=False)
    # Lossless storage with window/VOI tags spanning the stored range decodes to the JPEG's pixels,
    # file by file (both folders list the same stems in the same order).
    assert [Path(p).stem for p in dicom.manifest["path"]] == [Path(p).stem for p in jpeg.manifest["path"]]
    assert list(map(pixel_digest, dicom.images)) == list(map(pixel_digest, jpeg.images))
    assert dicom.manifest["patient_id"].nunique() == jpeg.manifest["patient_id"].nunique()
    # Trained on the JPEGs with the DICOM run's split, the core gives the pipeline's model.
    jpeg = replace(jpeg, manifest=jpeg.manifest.assign(split=dicom.manifest["split"].to_numpy()))
    result = fit(jpeg.split("train"), jpeg.split("val"), ModelConfig(**SETTINGS["model"]),
                 TrainConfig(**SETTINGS["train"]), progress=False)
    val = jpeg.split("val")
    jpeg_auc = mean_auc(val.labels, predict_imageset(result.checkpoint, val, ["original"])[["pneumonia"]].to_numpy(),
                        val.mask)
    dicom_auc = output(trained, "evaluate", "val_metrics")["mean_auc"]
    assert abs(dicom_auc - jpeg_auc) < 0.02, (dicom_auc, jpeg_auc)
    predictions = pd.read_csv(root / "outputs" / "predictions.csv", dtype={"id": str}, keep_default_na=False)
    assert len(predictions) == TEST_IMAGES and {"pneumonia", "flag", "flag_reason"} <= set(predictions.columns)


def test_no_patient_data_reaches_a_store_or_an_output(runs, root: Path):
    home = Path(os.environ["ZENML_CONFIG_PATH"]).parent
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in sorted((root / "dicom").rglob("*.dcm"))[:10] + sorted((root / "dicom_test").iterdir())]
    needles = [v.encode() for v in (*PHI.values(), "Zyxwv", *uids)]
    files = [p for p in itertools.chain(home.rglob("*"), (root / "outputs").rglob("*")) if p.is_file()]
    assert len(files) > 50  # the stores and outputs are where this test looks
    hits = [(str(p), n.decode()) for p in files for n in needles if n in p.read_bytes()]
    assert hits == []
