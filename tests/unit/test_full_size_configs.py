"""The full-size dataset configs read their documented layouts: configs/nih_full.yaml and
configs/chexpert.yaml against the real label tables in ../shared/data with generated images named as
the tables say (a sample, through the configs' own image-list filter), configs/mimic_cxr_jpg.yaml
against generated MIMIC-CXR-JPG tables."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from cxr.data.ingest import IngestConfig, read_source
from cxr.data.label_tables import CHEXPERT_OBSERVATIONS, NIH_FINDINGS, mimic_path
from cxr.data.split import SplitConfig, split_train_val
from cxr.errors import DataError
from tests.conftest import REPO_ROOT


def config_data(name: str) -> tuple[dict, dict]:
    params = yaml.safe_load((REPO_ROOT / "configs" / name).read_text())["parameters"]
    return params["data"], params["external"][0]["data"]


def write_tiny_images(root: Path, names: list[str]) -> None:
    pixel = np.full((8, 8), 127, np.uint8)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), pixel)


@pytest.fixture(scope="module")
def nih_table(real_data_dir: Path) -> pd.DataFrame:
    table = pd.read_csv(real_data_dir / "nih-labels" / "Data_Entry_2017_v2020.csv.gz", dtype=str)
    assert len(table) == 112_120 and table["Patient ID"].nunique() == 30_805
    return table


def test_nih_full_reads_the_real_table_through_its_official_lists(tmp_path: Path, nih_table: pd.DataFrame,
                                                                  real_data_dir: Path):
    data, external = config_data("nih_full.yaml")
    patients = nih_table["Patient ID"].drop_duplicates().sample(300, random_state=0)
    rows = nih_table[nih_table["Patient ID"].isin(patients)]
    train_val, test = rows[rows["Patient ID"].astype(int) % 4 != 0], rows[rows["Patient ID"].astype(int) % 4 == 0]
    (tmp_path / "train_val_list.txt").write_text("\n".join(train_val["Image Index"]) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(test["Image Index"]) + "\n")
    write_tiny_images(tmp_path / "images", rows["Image Index"].tolist())
    table = str(real_data_dir / "nih-labels" / "Data_Entry_2017_v2020.csv.gz")
    where = {"path": table, "image_dir": str(tmp_path / "images")}
    train = read_source(IngestConfig(**data | where | {"filter": {"image_list": str(tmp_path / "train_val_list.txt")}}))
    held = read_source(IngestConfig(**external | where | {"filter": {"image_list": str(tmp_path / "test_list.txt")}}))
    assert train.ids == train_val["Image Index"].tolist() and held.ids == test["Image Index"].tolist()
    assert train.label_names == NIH_FINDINGS and train.mask.all()
    want = np.array([[name in cell.split("|") for name in NIH_FINDINGS] for cell in train_val["Finding Labels"]])
    np.testing.assert_array_equal(train.labels > 0.5, want)
    split = split_train_val(train, SplitConfig(**yaml.safe_load((REPO_ROOT / "configs" / "nih_full.yaml").read_text())
                                               ["parameters"]["split"]))
    by_split = split.manifest.groupby("split")["patient_id"].apply(set)
    assert not by_split["train"] & by_split["val"] and not set(held.manifest["patient_id"]) & set(train.manifest["patient_id"])


def test_an_image_list_naming_an_image_the_table_lacks_is_an_error_naming_its_line(tmp_path: Path,
                                                                                   real_data_dir: Path):
    (tmp_path / "list.txt").write_text("00000001_000.png\n99999999_000.png\n")
    data, _ = config_data("nih_full.yaml")
    cfg = IngestConfig(**data | {"path": str(real_data_dir / "nih-labels" / "Data_Entry_2017_v2020.csv.gz"),
                                 "image_dir": str(tmp_path), "filter": {"image_list": str(tmp_path / "list.txt")}})
    with pytest.raises(DataError, match=r"list.txt line 2: '99999999_000.png'"):
        read_source(cfg)


def test_chexpert_reads_the_real_table_frontal_only_with_the_papers_per_finding_policy(tmp_path: Path,
                                                                                       real_data_dir: Path):
    data, _ = config_data("chexpert.yaml")
    table = pd.read_csv(real_data_dir / "chexpert-labels" / "chexpert_train.csv.gz", dtype=str, keep_default_na=False)
    assert len(table) == 223_414
    sample = table.iloc[:600]
    (tmp_path / "list.txt").write_text("\n".join(sample["Path"]) + "\n")
    write_tiny_images(tmp_path, sample["Path"].tolist())
    got = read_source(IngestConfig(**data | {"path": str(real_data_dir / "chexpert-labels" / "chexpert_train.csv.gz"),
                                             "image_dir": str(tmp_path),
                                             "filter": data["filter"] | {"image_list": str(tmp_path / "list.txt")}}))
    frontal = sample[sample["Frontal/Lateral"] == "Frontal"]
    assert got.ids == frontal["Path"].tolist() and len(got) < len(sample)
    assert got.label_names == CHEXPERT_OBSERVATIONS and got.mask.all()
    for finding, uncertain_value in (("Atelectasis", 1.0), ("Edema", 1.0), ("Cardiomegaly", 0.0),
                                     ("Pleural Effusion", 0.0)):
        cells = frontal[finding].to_numpy()
        column = got.labels[:, CHEXPERT_OBSERVATIONS.index(finding)]
        assert (cells == "-1.0").any(), finding
        assert (column[cells == "-1.0"] == uncertain_value).all() and (column[cells == "1.0"] == 1).all()
        assert (column[(cells == "0.0") | (cells == "")] == 0).all()


def test_a_per_finding_policy_naming_an_unknown_observation_is_refused():
    with pytest.raises(ValueError, match="not CheXpert observations"):
        IngestConfig(source="chexpert", path="x.csv", image_dir=".", policy={"per_finding": {"Effusion": "ones"}})


def write_mimic(root: Path) -> dict[str, Path]:
    """A small MIMIC-CXR-JPG tree: 3 patients, 4 studies, 6 images (one lateral), the three tables."""
    blank = dict.fromkeys(CHEXPERT_OBSERVATIONS, "")
    studies = [("10000032", "50414267", {"Atelectasis": "-1.0", "Edema": "1.0"}),
               ("10000032", "53189527", {"No Finding": "1.0"}),
               ("10000764", "57375967", {"Pleural Effusion": "-1.0", "Cardiomegaly": "1.0"}),
               ("10000898", "50771383", {"Pneumothorax": "0.0"})]
    labels = pd.DataFrame([{"subject_id": s, "study_id": t} | blank | cells for s, t, cells in studies])
    images = [("d1", "10000032", "50414267", "PA", "train"), ("d2", "10000032", "50414267", "LATERAL", "train"),
              ("d3", "10000032", "53189527", "AP", "train"), ("d4", "10000764", "57375967", "PA", "validate"),
              ("d5", "10000898", "50771383", "PA", "test"), ("d6", "10000898", "50771383", "AP", "test")]
    metadata = pd.DataFrame([{"dicom_id": d, "subject_id": s, "study_id": t, "ViewPosition": v} for d, s, t, v, _ in images])
    split = pd.DataFrame([{"dicom_id": d, "study_id": t, "subject_id": s, "split": p} for d, s, t, _, p in images])
    paths = {"path": root / "chexpert.csv.gz", "metadata": root / "metadata.csv.gz", "split_table": root / "split.csv.gz"}
    for frame, key in ((labels, "path"), (metadata, "metadata"), (split, "split_table")):
        frame.to_csv(paths[key], index=False)
    write_tiny_images(root, [mimic_path(s, t, d) for d, s, t, _, _ in images])
    return paths


def test_mimic_images_take_their_studys_labels_within_the_official_split(tmp_path: Path):
    data, external = config_data("mimic_cxr_jpg.yaml")
    where = {k: str(v) for k, v in write_mimic(tmp_path).items()} | {"image_dir": str(tmp_path)}
    train = read_source(IngestConfig(**data | where))
    test = read_source(IngestConfig(**external | where))
    assert train.ids == ["d1", "d3", "d4"] and test.ids == ["d5", "d6"]  # the lateral d2 left out
    assert train.manifest["patient_id"].tolist() == ["10000032", "10000032", "10000764"]
    assert train.manifest["path"].iloc[0] == str(tmp_path / "files/p10/p10000032/s50414267/d1.jpg")
    col = {name: j for j, name in enumerate(train.label_names)}
    assert train.labels[0, col["Atelectasis"]] == 1 and train.labels[0, col["Edema"]] == 1  # U-Ones
    assert train.labels[2, col["Pleural Effusion"]] == 0 and train.labels[2, col["Cardiomegaly"]] == 1  # U-Zeros
    assert train.labels[1, col["No Finding"]] == 1 and train.labels[1].sum() == 1


def test_a_mimic_image_whose_study_has_no_labels_is_an_error_naming_the_line(tmp_path: Path):
    data, _ = config_data("mimic_cxr_jpg.yaml")
    paths = write_mimic(tmp_path)
    metadata = pd.read_csv(paths["metadata"], dtype=str)
    metadata.loc[len(metadata)] = ["d7", "10000898", "59999999", "PA"]
    metadata.to_csv(paths["metadata"], index=False)
    where = {k: str(v) for k, v in paths.items()} | {"image_dir": str(tmp_path)}
    with pytest.raises(DataError, match=r"metadata.csv.gz line 8: study 59999999"):
        read_source(IngestConfig(**data | where))


def test_merged_nih_and_chexpert_harmonise_findings_mask_the_unlabelled_and_keep_patients_apart(
        tmp_path: Path, nih_table: pd.DataFrame, real_data_dir: Path):
    from cxr.metrics.subgroups import subgroup_table

    data = yaml.safe_load((REPO_ROOT / "configs" / "merged.yaml").read_text())["parameters"]["data"]
    nih_rows = nih_table.iloc[:400]
    chexpert = pd.read_csv(real_data_dir / "chexpert-labels" / "chexpert_train.csv.gz", dtype=str,
                           keep_default_na=False).iloc[:400]
    (tmp_path / "nih.txt").write_text("\n".join(nih_rows["Image Index"]))
    (tmp_path / "chexpert.txt").write_text("\n".join(chexpert["Path"]))
    write_tiny_images(tmp_path / "nih", nih_rows["Image Index"].tolist())
    write_tiny_images(tmp_path / "cx", chexpert["Path"].tolist())
    entries = {entry["name"]: entry for entry in data["sources"]}
    entries["nih"]["data"] |= {"path": str(real_data_dir / "nih-labels" / "Data_Entry_2017_v2020.csv.gz"),
                               "image_dir": str(tmp_path / "nih"), "filter": {"image_list": str(tmp_path / "nih.txt")}}
    entries["chexpert"]["data"] |= {"path": str(real_data_dir / "chexpert-labels" / "chexpert_train.csv.gz"),
                                    "image_dir": str(tmp_path / "cx"),
                                    "filter": {"frontal_only": True, "image_list": str(tmp_path / "chexpert.txt")}}
    merged = read_source(IngestConfig(**data | {"sources": [entries["nih"], entries["chexpert"]]}))
    names = list(merged.label_names)
    assert names[:14] == [{"Effusion": "Pleural Effusion", "Pleural_Thickening": "Pleural Thickening"}.get(n, n)
                          for n in NIH_FINDINGS]
    assert set(names) == set(names[:14]) | set(CHEXPERT_OBSERVATIONS) and names.count("Pleural Effusion") == 1
    nih, cx = (merged.manifest["dataset"] == "nih").to_numpy(), (merged.manifest["dataset"] == "chexpert").to_numpy()
    assert nih.sum() == 400 and cx.sum() == (chexpert["Frontal/Lateral"] == "Frontal").sum()
    known = {name: merged.mask[:, j] for j, name in enumerate(names)}
    assert known["Hernia"][nih].all() and not known["Hernia"][cx].any()              # NIH only
    assert known["Support Devices"][cx].all() and not known["Support Devices"][nih].any()  # CheXpert only
    assert known["Pleural Effusion"].all()                                              # both, after the map
    effusion = merged.labels[:, names.index("Pleural Effusion")]
    np.testing.assert_array_equal(effusion[nih] > 0.5, nih_rows["Finding Labels"].str.contains("Effusion").to_numpy())
    assert merged.ids[0] == "nih/" + nih_rows["Image Index"].iloc[0]
    assert merged.manifest["patient_id"].iloc[0] == "nih/" + nih_rows["Patient ID"].iloc[0]
    split = split_train_val(merged, SplitConfig(val_fraction=0.25))
    by_split = split.manifest.groupby("split")["patient_id"].apply(set)
    assert not by_split["train"] & by_split["val"]
    val = split.split("val")
    p = np.random.default_rng(0).random(val.labels.shape)
    table = subgroup_table(val.manifest, val.labels, p, val.label_names, dict.fromkeys(val.label_names, 0.5), val.mask)
    rows = table[table["attribute"] == "dataset"]
    assert set(rows["group"]) == {"nih", "chexpert"}
    hernia = rows[rows["label"] == "Hernia"].set_index("group")["n"]
    assert hernia["chexpert"] == 0 and hernia["nih"] == int((val.manifest["dataset"] == "nih").sum())
