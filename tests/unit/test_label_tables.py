"""NIH ChestX-ray14 and CheXpert label tables: counts checked against independent pandas sums."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.data.ingest import IngestConfig, read_source
from cxr.data.label_tables import (CHEXPERT_OBSERVATIONS, NIH_FINDINGS, LabelPolicy, TableFilter,
                                   read_chexpert_table, read_nih_table)
from cxr.data.split import SplitConfig, split_train_val
from cxr.errors import DataError

NIH = "nih-labels/Data_Entry_2017_v2020.csv.gz"
CHEXPERT = "chexpert-labels/chexpert_train.csv.gz"


@pytest.fixture(scope="module")
def nih_table(real_data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(real_data_dir / NIH)


@pytest.fixture(scope="module")
def chexpert_table(real_data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(real_data_dir / CHEXPERT)


class TestNIH:
    def test_counts_match_the_table(self, real_data_dir: Path, nih_table: pd.DataFrame):
        images = read_nih_table(real_data_dir / NIH, None)
        assert len(images) == 112_120 and images.manifest["patient_id"].nunique() == 30_805
        assert images.label_names == NIH_FINDINGS and images.mask.all()
        for j, name in enumerate(NIH_FINDINGS):
            expected = nih_table["Finding Labels"].str.split("|").apply(lambda f, n=name: n in f).sum()
            assert images.labels[:, j].sum() == expected, name
        no_finding = (nih_table["Finding Labels"] == "No Finding").to_numpy()
        assert no_finding.sum() == 60_361 and not images.labels[no_finding].any()
        assert images.labels[~no_finding].any(axis=1).all()

    def test_patient_level_split_keeps_patients_on_one_side(self, real_data_dir: Path):
        images = split_train_val(read_nih_table(real_data_dir / NIH, None), SplitConfig(val_fraction=0.1))
        sides = images.manifest.groupby("patient_id")["split"].nunique()
        assert (sides == 1).all()
        assert 0.07 < (images.manifest["split"] == "val").mean() < 0.13

    def test_filters(self, real_data_dir: Path, nih_table: pd.DataFrame):
        pa = read_nih_table(real_data_dir / NIH, None, TableFilter(view_positions=["PA"]))
        assert len(pa) == (nih_table["View Position"] == "PA").sum()
        one = read_nih_table(real_data_dir / NIH, None, TableFilter(one_per_patient=True))
        assert len(one) == 30_805 and one.manifest["patient_id"].is_unique

    def test_unknown_finding_names_the_line(self, tmp_path: Path):
        table = tmp_path / "entry.csv"
        table.write_text("Image Index,Finding Labels,Patient ID\na.png,Effusion,1\nb.png,Efusion|Mass,2\n")
        with pytest.raises(DataError, match=r"line 3: unknown finding 'Efusion'"):
            read_nih_table(table, None)

    def test_ingest_config_reads_nih1000_images(self, real_data_dir: Path):
        images = read_source(IngestConfig(source="nih", path="{data_dir}/nih1000-64/labels.csv",
                                          image_dir="{data_dir}/nih1000-64/images"))
        assert len(images) == 800 and images.label_names == NIH_FINDINGS
        assert all(Path(p).is_file() for p in images.manifest["path"])
        assert "sex" not in images.manifest.columns

    def test_metadata_joins_sex_age_band_and_view(self, real_data_dir: Path, nih_table: pd.DataFrame):
        images = read_source(IngestConfig(source="nih", path="{data_dir}/nih1000-64/labels.csv",
                                          image_dir="{data_dir}/nih1000-64/images", metadata="{data_dir}/" + NIH))
        entry = nih_table.set_index("Image Index").loc[images.ids]
        assert images.manifest["sex"].tolist() == entry["Patient Gender"].tolist()
        assert images.manifest["view"].tolist() == entry["View Position"].tolist()
        bands = pd.cut(entry["Patient Age"], [0, 18, 40, 60, 80, 120], right=False,
                       labels=["0-17", "18-39", "40-59", "60-79", "80+"]).astype(str).replace("nan", "")
        assert images.manifest["age_band"].tolist() == bands.tolist()

    def test_own_demographic_columns_and_odd_values(self, tmp_path: Path):
        table = tmp_path / "entry.csv"
        table.write_text("Image Index,Finding Labels,Patient ID,Patient Age,Patient Gender,View Position\n"
                         "a.png,Effusion,1,45,M,PA\nb.png,No Finding,2,412,F,AP\nc.png,Mass,3,,X,\n")
        manifest = read_nih_table(table, None).manifest
        assert manifest["sex"].tolist() == ["M", "F", ""] and manifest["age_band"].tolist() == ["40-59", "", ""]
        assert manifest["view"].tolist() == ["PA", "AP", ""]

    def test_metadata_errors_name_the_table(self, tmp_path: Path):
        table, other = tmp_path / "entry.csv", tmp_path / "other.csv"
        table.write_text("Image Index,Finding Labels,Patient ID\na.png,Effusion,1\n")
        other.write_text("Image Index,Patient Age,Patient Gender,View Position\nz.png,40,M,PA\n")
        with pytest.raises(DataError, match="other.csv holds none of the images of .*entry.csv"):
            read_nih_table(table, None, metadata=other)
        other.write_text("Image Index,Patient Age\na.png,40\n")
        with pytest.raises(DataError, match=r"other.csv lacks columns \['Patient Gender', 'View Position'\]"):
            read_nih_table(table, None, metadata=other)
        with pytest.raises(ValueError, match="data.metadata joins an NIH Data_Entry or MIMIC metadata table"):
            IngestConfig(source="folders", path="x", metadata=str(other))


class TestCheXpert:
    def test_demographics_from_sex_age_and_ap_pa(self, real_data_dir: Path, chexpert_table: pd.DataFrame):
        manifest = read_chexpert_table(real_data_dir / CHEXPERT, None).manifest
        assert (manifest["sex"] == "M").sum() == (chexpert_table["Sex"] == "Male").sum()
        assert (manifest["view"] == "PA").sum() == (chexpert_table["AP/PA"] == "PA").sum()
        assert (manifest["age_band"] == "80+").sum() == chexpert_table["Age"].between(80, 119).sum()

    @pytest.mark.parametrize("uncertain", ["zeros", "ones", "ignore"])
    @pytest.mark.parametrize("blank", ["negative", "unknown"])
    def test_policies_match_the_table(self, real_data_dir: Path, chexpert_table: pd.DataFrame, uncertain: str,
                                      blank: str):
        images = read_chexpert_table(real_data_dir / CHEXPERT, None, LabelPolicy(uncertain=uncertain, blank=blank))
        assert len(images) == 223_414 and images.label_names == CHEXPERT_OBSERVATIONS
        for j, name in enumerate(CHEXPERT_OBSERVATIONS):
            column = chexpert_table[name]
            positive, negative = (column == 1).sum(), (column == 0).sum()
            uncertain_n, blank_n = (column == -1).sum(), column.isna().sum()
            known = positive + negative + (uncertain_n if uncertain != "ignore" else 0) \
                + (blank_n if blank == "negative" else 0)
            assert images.mask[:, j].sum() == known, name
            assert images.labels[:, j].sum() == positive + (uncertain_n if uncertain == "ones" else 0), name
            assert not images.labels[~images.mask[:, j], j].any()

    def test_frontal_and_view_filters(self, real_data_dir: Path, chexpert_table: pd.DataFrame):
        frontal = read_chexpert_table(real_data_dir / CHEXPERT, None, filt=TableFilter(frontal_only=True))
        assert len(frontal) == (chexpert_table["Frontal/Lateral"] == "Frontal").sum()
        assert frontal.manifest["id"].str.contains("frontal").all()
        ap = read_chexpert_table(real_data_dir / CHEXPERT, None, filt=TableFilter(view_positions=["AP"]))
        assert len(ap) == (chexpert_table["AP/PA"] == "AP").sum()
        patients = chexpert_table["Path"].str.extract(r"(patient\d+)", expand=False)
        one = read_chexpert_table(real_data_dir / CHEXPERT, None, filt=TableFilter(one_per_patient=True))
        assert len(one) == patients.nunique()

    def test_bad_cell_names_line_and_column(self, tmp_path: Path):
        header = "Path,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_OBSERVATIONS)
        cells = [""] * len(CHEXPERT_OBSERVATIONS)
        good = "CheXpert/train/patient00001/study1/view1_frontal.jpg,Frontal,AP," + ",".join(cells)
        cells[3] = "2.0"
        bad = "CheXpert/train/patient00002/study1/view1_frontal.jpg,Frontal,AP," + ",".join(cells)
        table = tmp_path / "train.csv"
        table.write_text("\n".join([header, good, bad]) + "\n")
        with pytest.raises(DataError, match=r"line 3, column 'Lung Opacity': '2.0'"):
            read_chexpert_table(table, None)

    def test_missing_image_files_are_listed(self, tmp_path: Path):
        header = "Path,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_OBSERVATIONS)
        row = "small/train/patient00001/study1/view1_frontal.jpg,Frontal,AP," + ",".join(["1.0"] * 14)
        table = tmp_path / "train.csv"
        table.write_text(f"{header}\n{row}\n")
        with pytest.raises(DataError, match="missing image file: .*patient00001/study1/view1_frontal.jpg"):
            read_chexpert_table(table, tmp_path)
        np.testing.assert_array_equal(read_chexpert_table(table, None).labels, np.ones((1, 14), np.float32))
