"""Ingest sources and every bad-input case: each error names the file, row or key."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr.data.imageset import ImageSet
from cxr.data.ingest import IngestConfig, read_source, resolve_path
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.sources import (read_class_folders, read_csv_table, read_image_folder,
                              read_medmnist_npz)
from cxr.data.split import SplitConfig, split_train_val
from cxr.errors import DataError
from tests.helpers import synthetic_xray


class TestClassFolders:
    def test_labels_ids_and_patients(self, class_tree: Path):
        images = read_class_folders(class_tree, "NORMAL", r"^(patient\w\d+)")
        assert images.label_names == ("pneumonia",)
        assert len(images) == 24 and images.labels.sum() == 12 and images.mask.all()
        first = images.manifest.iloc[0]
        assert first["id"] == "patientN0_img0" and first["patient_id"] == "patientN0"
        assert images.manifest["patient_id"].nunique() == 12

    def test_without_negative_class_every_folder_is_a_label(self, class_tree: Path):
        images = read_class_folders(class_tree)
        assert images.label_names == ("normal", "pneumonia")
        assert (images.labels.sum(1) == 1).all()

    def test_unknown_negative_class_is_named(self, class_tree: Path):
        with pytest.raises(DataError, match="'HEALTHY'"):
            read_class_folders(class_tree, "HEALTHY")

    def test_missing_root(self, tmp_path: Path):
        with pytest.raises(DataError, match="not a directory"):
            read_class_folders(tmp_path / "nope")

    def test_zero_byte_file_is_named(self, class_tree: Path):
        bad = class_tree / "NORMAL" / "empty.png"
        bad.write_bytes(b"")
        with pytest.raises(DataError, match=f"zero-byte image file: {bad}"):
            read_class_folders(class_tree, "NORMAL")

    def test_duplicate_ids_are_named(self, class_tree: Path):
        cv2.imwrite(str(class_tree / "PNEUMONIA" / "patientN0_img0.png"), np.zeros((8, 8), np.uint8))
        with pytest.raises(DataError, match="duplicate image id 'patientN0_img0'"):
            read_class_folders(class_tree, "NORMAL")


class TestImageFolder:
    def test_unlabelled_images(self, class_tree: Path):
        images = read_image_folder(class_tree / "NORMAL", ["pneumonia"])
        assert len(images) == 12 and images.label_names == ("pneumonia",)
        assert not images.mask.any() and not images.is_labelled

    def test_empty_folder(self, tmp_path: Path):
        with pytest.raises(DataError, match="holds no images"):
            read_image_folder(tmp_path)


def write_table(tmp_path: Path, rows: list[dict]) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for row in rows:
        cv2.imwrite(str(folder / f"{row['image']}.png"), synthetic_xray(rng, 32))
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


class TestCsvTable:
    ROWS = [{"image": "a", "patient": "p1", "effusion": "1", "mass": "0"},
            {"image": "b", "patient": "p1", "effusion": "0", "mass": ""},
            {"image": "c", "patient": "p2", "effusion": "1.0", "mass": "1"}]

    def test_labels_mask_and_patients(self, tmp_path: Path):
        table = write_table(tmp_path, self.ROWS)
        images = read_csv_table(table, tmp_path / "imgs", id_column="image", patient_column="patient",
                                image_suffix=".png")
        assert images.label_names == ("effusion", "mass")
        np.testing.assert_array_equal(images.labels, [[1, 0], [0, 0], [1, 1]])
        np.testing.assert_array_equal(images.mask, [[True, True], [True, False], [True, True]])
        assert list(images.manifest["patient_id"]) == ["p1", "p1", "p2"]

    def test_unknown_label_value_names_line_and_column(self, tmp_path: Path):
        table = write_table(tmp_path, self.ROWS[:2] + [{**self.ROWS[2], "mass": "maybe"}])
        with pytest.raises(DataError, match=r"line 4, column 'mass': unknown label value 'maybe'"):
            read_csv_table(table, tmp_path / "imgs", id_column="image", patient_column="patient",
                           image_suffix=".png")

    def test_missing_image_is_named(self, tmp_path: Path):
        table = write_table(tmp_path, self.ROWS)
        (tmp_path / "imgs" / "b.png").unlink()
        with pytest.raises(DataError, match=r"missing image file: .*b\.png"):
            read_csv_table(table, tmp_path / "imgs", id_column="image", image_suffix=".png")

    def test_missing_column_is_named(self, tmp_path: Path):
        table = write_table(tmp_path, self.ROWS)
        with pytest.raises(DataError, match=r"lacks columns \['Image Index'\]"):
            read_csv_table(table, tmp_path / "imgs", id_column="Image Index")

    def test_config_needs_image_dir(self):
        with pytest.raises(ValueError, match="image_dir"):
            IngestConfig(source="csv", path="x.csv")

    def test_config_rejects_unknown_keys(self):
        with pytest.raises(ValueError, match="negativ_class"):
            IngestConfig(source="folders", path="x", negativ_class="NORMAL")

    def test_real_metadata_table_with_a_path_column(self, real_data_dir: Path):
        folder = real_data_dir / "covid-fullres" / "actualmed"
        expected = pd.read_csv(folder / "metadata.csv", dtype=str)
        images = read_source(IngestConfig(source="csv", path=str(folder / "metadata.csv"), image_dir=str(folder / "images"),
                                          id_column="patientid", path_column="imagename", label_columns=[]))
        assert images.ids == expected["patientid"].tolist() and images.label_names == ()
        assert images.manifest["path"].tolist() == [str(folder / "images" / n) for n in expected["imagename"]]

    def test_real_latin1_table_is_refused_naming_the_file_then_read_with_its_encoding(self, real_data_dir: Path,
                                                                                   tmp_path: Path):
        folder = real_data_dir / "covid-fullres" / "figure1"
        table = folder / "metadata.csv"
        with pytest.raises(UnicodeDecodeError):
            table.read_text(encoding="utf-8")
        expected = pd.read_csv(table, encoding="latin-1", dtype=str, keep_default_na=False)
        assert "Fever 38\u00b0" in " ".join(expected["notes"])
        for image in (folder / "images").iterdir():  # file names are the ids, extensions vary
            (tmp_path / image.stem).symlink_to(image)
        cfg = {"source": "csv", "path": str(table), "image_dir": str(tmp_path), "id_column": "patientid",
               "label_columns": []}
        with pytest.raises(DataError, match=rf"{table} is not valid utf-8 .*encoding"):
            read_source(IngestConfig(**cfg))
        images = read_source(IngestConfig(**cfg, encoding="latin-1"))
        assert images.ids == expected["patientid"].tolist() and images.label_names == ()

class TestMedMNIST:
    def test_official_keys_and_rgb_to_gray(self, tmp_path: Path):
        path = tmp_path / "pneumoniamnist.npz"
        rgb = np.random.default_rng(0).integers(0, 255, (6, 28, 28, 3), dtype=np.uint8)
        np.savez(path, train_images=rgb, train_labels=np.array([[0], [1], [1], [0], [1], [0]]),
                 val_images=rgb[:2], val_labels=np.array([[0], [1]]))
        images = read_medmnist_npz(path, "train", ["pneumonia"])
        assert images.images.shape == (6, 28, 28) and images.labels[:, 0].tolist() == [0, 1, 1, 0, 1, 0]
        expected = np.round(rgb[0].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        np.testing.assert_array_equal(images.images[0], expected.astype(np.uint8))
        assert len(read_medmnist_npz(path, "val")) == 2

    def test_multiclass_labels_become_indicators(self, tmp_path: Path):
        path = tmp_path / "x.npz"
        np.savez(path, test_images=np.zeros((3, 8, 8), np.uint8), test_labels=np.array([[0], [2], [1]]))
        images = read_medmnist_npz(path, "test")
        np.testing.assert_array_equal(images.labels, np.eye(3)[[0, 2, 1]])

    def test_missing_key_is_named(self, tmp_path: Path):
        path = tmp_path / "x.npz"
        np.savez(path, train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros((2, 1)))
        with pytest.raises(DataError, match="test_images"):
            read_medmnist_npz(path, "test")


class TestCorruptImages:
    def test_corrupt_file_is_named(self, class_tree: Path):
        bad = class_tree / "NORMAL" / "broken.png"
        bad.write_bytes(b"not a png at all")
        images = read_class_folders(class_tree, "NORMAL")
        with pytest.raises(DataError, match=f"corrupt or unreadable image file: {bad}"):
            preprocess_imageset(images, PreprocessConfig(image_size=32), progress=False)

    def test_skip_corrupt_counts_and_lists(self, class_tree: Path):
        bad = class_tree / "NORMAL" / "broken.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        images = read_class_folders(class_tree, "NORMAL")
        out = preprocess_imageset(images, PreprocessConfig(image_size=32, skip_corrupt=True), progress=False)
        assert len(out) == len(images) - 1 and "broken" not in out.ids
        assert [s["path"] for s in out.skipped] == [str(bad)]
        assert out.images.shape == (len(images) - 1, 32, 32)


class TestSplit:
    def test_patient_level_stratified_and_seeded(self, class_tree: Path):
        images = read_class_folders(class_tree, "NORMAL", r"^(patient\w\d+)")
        a = split_train_val(images, SplitConfig(val_fraction=0.25, seed=1))
        b = split_train_val(images, SplitConfig(val_fraction=0.25, seed=1))
        assert a.manifest["split"].tolist() == b.manifest["split"].tolist()
        train, val = a.split("train"), a.split("val")
        assert not set(train.manifest["patient_id"]) & set(val.manifest["patient_id"])
        assert 0 < val.labels.sum() < len(val)

    def test_single_class_val_is_refused(self):
        manifest = pd.DataFrame({"id": list("abcdefgh"), "path": "x", "patient_id": list("abcdefgh"),
                                 "split": "all"})
        labels = np.array([[1]] * 7 + [[0]], np.float32)
        images = ImageSet(manifest, ("pneumonia",), labels, np.ones_like(labels, bool))
        with pytest.raises(DataError, match="single class for label 'pneumonia'"):
            split_train_val(images, SplitConfig(val_fraction=0.25))

    def test_one_single_class_label_among_several_warns_and_names_it(self):
        manifest = pd.DataFrame({"id": list("abcdefgh"), "path": "x", "patient_id": list("abcdefgh"),
                                 "split": "all"})
        labels = np.array([[1, 0], [0, 0]] * 4, np.float32)
        images = ImageSet(manifest, ("effusion", "hernia"), labels, np.ones_like(labels, bool))
        with pytest.warns(UserWarning, match="single class for label 'hernia'"):
            split = split_train_val(images, SplitConfig(val_fraction=0.25))
        assert split.split("val").labels[:, 1].sum() == 0

    def test_too_few_patients(self, class_tree: Path):
        images = read_class_folders(class_tree, "NORMAL", r"^(patient)")
        with pytest.raises(DataError, match="too few"):
            split_train_val(images, SplitConfig(val_fraction=0.25))

    def test_empty_set(self, class_tree: Path):
        images = read_class_folders(class_tree, "NORMAL").subset([])
        with pytest.raises(DataError, match="empty"):
            split_train_val(images, SplitConfig())


def test_data_dir_setting(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path))
    assert resolve_path("{data_dir}/kermany") == tmp_path / "kermany"


@pytest.mark.slow
def test_real_kermany_tree(real_data_dir: Path):
    images = read_source(IngestConfig(source="folders", path="{data_dir}/kermany-pneumonia-224/train",
                                      negative_class="NORMAL",
                                      patient_id_pattern=r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"))
    assert len(images) == 5216 and int(images.labels.sum()) == 3875
    pneumonia_patients = images.manifest.loc[images.labels[:, 0] == 1, "patient_id"].nunique()
    assert pneumonia_patients == 1635
