"""Readers for the two public multi-label tables: NIH ChestX-ray14 and CheXpert.

NIH's ``Data_Entry`` table joins findings with ``|`` and writes ``No Finding`` for an image
with none (all 14 known negatives). CheXpert's table holds 14 observations as 1.0 / 0.0 /
-1.0 (uncertain) / blank (not mentioned); a ``LabelPolicy`` maps the last two to 0, 1 or
unknown (masked). Label names keep the fixed published order in every artifact.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxr.data.imageset import ImageSet, make_manifest, years_band
from cxr.data.sources import check_cells, check_files, read_csv_strings, with_header_columns
from cxr.errors import DataError, list_problems
from cxr.registry import Registry

NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NIH_NO_FINDING = "No Finding"
CHEXPERT_OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                         "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                         "Pleural Other", "Fracture", "Support Devices")
CHEXPERT_PATIENT = re.compile(r"(patient\d+)")
NIH_DEMOGRAPHICS = {"sex": "Patient Gender", "age_band": "Patient Age", "view": "View Position"}
CHEXPERT_DEMOGRAPHICS = {"sex": "Sex", "age_band": "Age", "view": "AP/PA"}
MIMIC_DEMOGRAPHICS = {"sex": "gender", "age_band": "anchor_age", "view": "ViewPosition"}  # sex, age: MIMIC-IV columns when joined
SEX_CODES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
UNCERTAIN_POLICIES = Registry("uncertain-label policy")
BLANK_POLICIES = Registry("blank-label policy")


class CellRule(NamedTuple):
    """What a CheXpert cell becomes: its label value, and whether that label counts as known."""

    value: float
    known: bool


@UNCERTAIN_POLICIES.register("zeros")
def u_zeros() -> CellRule:
    """U-Zeros: uncertain is negative."""
    return CellRule(0.0, True)


@UNCERTAIN_POLICIES.register("ones")
def u_ones() -> CellRule:
    """U-Ones: uncertain is positive."""
    return CellRule(1.0, True)


@UNCERTAIN_POLICIES.register("ignore")
def u_ignore() -> CellRule:
    """U-Ignore: uncertain is masked out of loss and metrics."""
    return CellRule(0.0, False)


@BLANK_POLICIES.register("negative")
def blank_negative() -> CellRule:
    """Not mentioned is a known negative."""
    return CellRule(0.0, True)


@BLANK_POLICIES.register("unknown")
def blank_unknown() -> CellRule:
    """Not mentioned is unknown (masked)."""
    return CellRule(0.0, False)


class LabelPolicy(BaseModel):
    """How uncertain (-1) and blank CheXpert cells become labels (``parameters.data.policy``).

    ``uncertain``: ``zeros`` (U-Zeros), ``ones`` (U-Ones) or ``ignore`` (U-Ignore, masked out).
    ``per_finding``: another uncertain policy for named observations, as the CheXpert paper
    chose per finding (U-Ones for Atelectasis and Edema, U-Zeros for Cardiomegaly, ...).
    ``blank``: ``negative`` (0, known) or ``unknown`` (masked out).
    """

    model_config = ConfigDict(extra="forbid")

    uncertain: UNCERTAIN_POLICIES.choice() = "zeros"
    per_finding: dict[str, UNCERTAIN_POLICIES.choice()] = Field(default_factory=dict)
    blank: BLANK_POLICIES.choice() = "negative"

    @field_validator("per_finding")
    @classmethod
    def _known_findings(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = [name for name in value if name not in CHEXPERT_OBSERVATIONS]
        if unknown:
            raise ValueError(f"policy.per_finding names {unknown}, not CheXpert observations: {list(CHEXPERT_OBSERVATIONS)}")
        return value

    def uncertain_rule(self, finding: str) -> CellRule:
        """The rule for an uncertain (-1) cell of ``finding``."""
        return UNCERTAIN_POLICIES.create(self.per_finding.get(finding, self.uncertain))


class TableFilter(BaseModel):
    """Row filters applied before labels are parsed (``parameters.data.filter``)."""

    model_config = ConfigDict(extra="forbid")

    frontal_only: bool = Field(False, description="CheXpert: drop lateral views (NIH is all frontal)")
    view_positions: list[str] | None = Field(None, description="keep only these views, e.g. [PA] or [AP, PA]")
    one_per_patient: bool = Field(False, description="keep each patient's first row in table order")
    image_list: str | None = Field(None, description="a text file of image ids, one per line, to keep (e.g. NIH's "
                                   "official train_val_list.txt or test_list.txt)")
    splits: list[str] | None = Field(None, description="mimic_cxr_jpg: keep these splits of the official split "
                                     "table, e.g. [train, validate] or [test]")


def read_table(path: str | Path) -> pd.DataFrame:
    """The CSV (or .csv.gz) at ``path`` as strings, blanks kept as empty strings."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label table {path} does not exist")
    table = read_csv_strings(path)
    if table.empty:
        raise DataError(f"{path} has no rows")
    return table


def require_columns(table: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Raise a DataError naming the table and the columns it lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{source} lacks columns {missing}; it has {list(table.columns)}")


def listed_rows(ids: pd.Series, list_path: Path) -> np.ndarray:
    """Whether each of ``ids`` is a line of ``list_path``; a listed id missing from ``ids`` is an error
    naming the file and line."""
    if not list_path.is_file():
        raise DataError(f"image list {list_path} does not exist")
    wanted = {name: i for i, name in enumerate(line.strip() for line in list_path.read_text().splitlines()) if name}
    missing = sorted(set(wanted) - set(ids))
    if missing:
        raise DataError(f"{len(missing)} image(s) of the image list are not in the label table:" + list_problems(
            [f"{list_path} line {wanted[name] + 1}: {name!r}" for name in missing]))
    return ids.isin(wanted).to_numpy()


def filter_rows(table: pd.DataFrame, filt: TableFilter, patient: pd.Series, view: pd.Series | None,
                frontal: pd.Series | None, ids: pd.Series | None = None,
                official_split: pd.Series | None = None) -> np.ndarray:
    """Row indices kept by the filter, in table order (``ids``: what ``filt.image_list`` names)."""
    keep = np.ones(len(table), bool)
    if filt.image_list is not None:
        keep &= listed_rows(ids, Path(filt.image_list))
    if filt.splits is not None:
        if official_split is None:
            raise DataError("filter.splits asked for but this source has no official split table")
        keep &= official_split.isin(filt.splits).to_numpy()
    if filt.frontal_only and frontal is not None:
        keep &= frontal.to_numpy()
    if filt.view_positions is not None:
        if view is None:
            raise DataError("view_positions filter asked for but the table has no view column")
        keep &= view.isin(filt.view_positions).to_numpy()
    rows = np.flatnonzero(keep)
    if filt.one_per_patient:
        rows = rows[~patient.iloc[rows].duplicated().to_numpy()]
    if len(rows) == 0:
        raise DataError(f"no rows left after the filter {filt.model_dump()}")
    return rows


def nih_labels(findings: pd.Series, source: str) -> np.ndarray:
    """(N, 14) 0/1 matrix from ``Finding Labels`` cells; an unknown finding is an error."""
    known = set(NIH_FINDINGS) | {NIH_NO_FINDING}
    split = findings.str.split("|")
    problems = [f"{source} line {i + 2}: unknown finding {name!r} in {cell!r}"
                for i, (cell, names) in enumerate(zip(findings, split)) for name in names if name not in known]
    if problems:
        raise DataError("bad Finding Labels:" + list_problems(problems))
    exploded = split.explode()
    hits = pd.crosstab(exploded.index, exploded).reindex(index=range(len(findings)), columns=list(NIH_FINDINGS),
                                                         fill_value=0)
    return (hits.to_numpy() > 0).astype(np.float32)


def demographics(table: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """``sex`` (M/F), ``age_band`` and ``view`` from the table's columns named by ``columns``,
    for subgroup reports; a column the table lacks, or a value not understood, is ''."""
    def column(name: str) -> pd.Series:
        return table[columns[name]].str.strip() if columns[name] in table.columns else pd.Series([""] * len(table))

    years = pd.to_numeric(column("age_band").str.rstrip("Yy"), errors="coerce")
    return pd.DataFrame({"sex": column("sex").str.upper().map(SEX_CODES).fillna(""),
                         "age_band": [years_band(y) for y in years.fillna(-1)],
                         "view": column("view").str.upper()})


def joined_metadata(table: pd.DataFrame, metadata_path: str | Path, source: str) -> pd.DataFrame:
    """``table`` with the NIH demographic columns of the ``Data_Entry`` table at ``metadata_path``
    joined on ``Image Index`` (the table's own are replaced); images missing there stay blank."""
    metadata = read_table(metadata_path)
    require_columns(metadata, ["Image Index", *NIH_DEMOGRAPHICS.values()], str(metadata_path))
    metadata = metadata.drop_duplicates("Image Index").set_index("Image Index")[list(NIH_DEMOGRAPHICS.values())]
    joined = table.drop(columns=[c for c in NIH_DEMOGRAPHICS.values() if c in table.columns])
    joined = joined.join(metadata, on="Image Index")
    if joined[list(NIH_DEMOGRAPHICS.values())].isna().all(axis=None):
        raise DataError(f"{metadata_path} holds none of the images of {source} (joined on Image Index)")
    return joined.fillna({c: "" for c in NIH_DEMOGRAPHICS.values()})


def read_nih_table(csv_path: str | Path, image_dir: str | Path | None, filt: TableFilter = TableFilter(),
                   metadata: str | Path | None = None) -> ImageSet:
    """NIH ``Data_Entry``: ``Image Index``, ``Finding Labels`` (``|``-joined), ``Patient ID``.

    Every label is known; ``No Finding`` is all zeros. With ``image_dir`` None the image
    files are not checked (label-table work without the 45 GB of images). Sex, age band and
    view come from the table's own columns, or from the full ``Data_Entry`` table at
    ``metadata`` (for subsets such as nih1000 that lack them).
    """
    table = read_table(csv_path)
    require_columns(table, ["Image Index", "Finding Labels", "Patient ID"], str(csv_path))
    check_cells(table, ["Image Index"], str(csv_path))
    if metadata is not None:
        table = joined_metadata(table, metadata, str(csv_path))
    view = table["View Position"] if "View Position" in table.columns else None
    rows = filter_rows(table, filt, table["Patient ID"], view, None, table["Image Index"])
    table = table.iloc[rows].reset_index(drop=True)
    labels = nih_labels(table["Finding Labels"].str.strip(), str(csv_path))
    return _imageset(table["Image Index"].tolist(), table["Image Index"].tolist(), table["Patient ID"].tolist(),
                     image_dir, NIH_FINDINGS, labels, np.ones_like(labels, bool), demographics(table, NIH_DEMOGRAPHICS))


def chexpert_labels(table: pd.DataFrame, policy: LabelPolicy, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, mask) of the 14 observations under ``policy``; other cell values are errors."""
    cells = table[list(CHEXPERT_OBSERVATIONS)].apply(lambda c: c.str.strip())
    bad = ~cells.isin(["1.0", "0.0", "-1.0", "1", "0", "-1", ""])
    if bad.to_numpy().any():
        rows, cols = np.nonzero(bad.to_numpy())
        raise DataError("bad CheXpert label values:" + list_problems(
            [f"{source} line {r + 2}, column {cells.columns[c]!r}: {cells.iat[r, c]!r} (use 1.0, 0.0, -1.0 or blank)"
             for r, c in zip(rows, cols)]))
    blank = (cells == "").to_numpy()
    values = cells.replace("", "0").astype(float).to_numpy()
    uncertain = values == -1
    rules = [policy.uncertain_rule(name) for name in CHEXPERT_OBSERVATIONS]
    u_value, u_known = np.array([r.value for r in rules]), np.array([r.known for r in rules])
    blank_rule = BLANK_POLICIES.create(policy.blank)
    labels = np.where(uncertain, u_value[None, :], np.where(blank, blank_rule.value, values))
    mask = ~((uncertain & ~u_known[None, :]) | (blank & (not blank_rule.known)))
    return labels.astype(np.float32), mask


def read_chexpert_table(csv_path: str | Path, image_root: str | Path | None, policy: LabelPolicy = LabelPolicy(),
                        filt: TableFilter = TableFilter()) -> ImageSet:
    """CheXpert ``train.csv``: ``Path`` (relative to ``image_root``), ``Frontal/Lateral``,
    ``AP/PA`` and the 14 observations; the patient is the ``patientNNNNN`` part of the path."""
    table = read_table(csv_path)
    require_columns(table, ["Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS], str(csv_path))
    check_cells(table, ["Path"], str(csv_path))
    patient = table["Path"].str.extract(CHEXPERT_PATIENT, expand=False)
    if patient.isna().any():
        line = int(np.flatnonzero(patient.isna().to_numpy())[0]) + 2
        raise DataError(f"{csv_path} line {line}: no patientNNNNN in Path {table['Path'].iloc[line - 2]!r}")
    rows = filter_rows(table, filt, patient, table["AP/PA"], table["Frontal/Lateral"] == "Frontal", table["Path"])
    table, patient = table.iloc[rows].reset_index(drop=True), patient.iloc[rows].tolist()
    labels, mask = chexpert_labels(table, policy, str(csv_path))
    return _imageset(table["Path"].tolist(), table["Path"].tolist(), patient, image_root, CHEXPERT_OBSERVATIONS,
                     labels, mask, demographics(table, CHEXPERT_DEMOGRAPHICS))


def mimic_path(subject: str, study: str, dicom: str) -> str:
    """Where MIMIC-CXR-JPG keeps an image: ``files/p10/p10000032/s50414267/<dicom_id>.jpg``."""
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


def read_mimic_table(labels_path: str | Path, metadata_path: str | Path, image_root: str | Path | None,
                     split_path: str | Path | None = None, policy: LabelPolicy = LabelPolicy(),
                     filt: TableFilter = TableFilter()) -> ImageSet:
    """MIMIC-CXR-JPG: the CheXpert-labeller table (one row per study: ``subject_id``, ``study_id`` and
    the 14 observations) joined to the metadata table (one row per image: ``dicom_id``, ``subject_id``,
    ``study_id``, ``ViewPosition``) on subject and study, so each image gets its study's labels;
    ``split_path`` (the official split CSV, joined on ``dicom_id``) lets ``filt.splits`` keep its
    ``train``/``validate``/``test`` rows. The patient is ``subject_id``; a study without labels is an error."""
    labels = read_table(labels_path)
    require_columns(labels, ["subject_id", "study_id", *CHEXPERT_OBSERVATIONS], str(labels_path))
    metadata = read_table(metadata_path)
    require_columns(metadata, ["dicom_id", "subject_id", "study_id", "ViewPosition"], str(metadata_path))
    check_cells(metadata, ["dicom_id", "subject_id", "study_id"], str(metadata_path))
    table = metadata.merge(labels.drop_duplicates(["subject_id", "study_id"]), on=["subject_id", "study_id"],
                           how="left", indicator=True)
    unlabelled = np.flatnonzero((table["_merge"] == "left_only").to_numpy())
    if len(unlabelled):
        raise DataError(f"{len(unlabelled)} image(s) of {metadata_path} have no study in {labels_path}:" + list_problems(
            [f"{metadata_path} line {i + 2}: study {table['study_id'].iat[i]}" for i in unlabelled]))
    table = table.drop(columns="_merge")
    if split_path is not None:
        split = read_table(split_path)
        require_columns(split, ["dicom_id", "split"], str(split_path))
        table = table.merge(split[["dicom_id", "split"]].rename(columns={"split": "official_split"}),
                            on="dicom_id", how="left").fillna({"official_split": ""})
    view = table["ViewPosition"].str.strip().str.upper()
    rows = filter_rows(table, filt, table["subject_id"], view, view.isin(["PA", "AP"]), table["dicom_id"],
                       table.get("official_split"))
    table = table.iloc[rows].reset_index(drop=True)
    names = [mimic_path(*ids) for ids in zip(table["subject_id"], table["study_id"], table["dicom_id"])]
    label_values, mask = chexpert_labels(table, policy, str(labels_path))
    return _imageset(table["dicom_id"].tolist(), names, table["subject_id"].tolist(), image_root,
                     CHEXPERT_OBSERVATIONS, label_values, mask, demographics(table, MIMIC_DEMOGRAPHICS))


def _imageset(ids: list[str], names: list[str], patients: list[str], image_dir: str | Path | None,
              label_names: Sequence[str], labels: np.ndarray, mask: np.ndarray, header: pd.DataFrame) -> ImageSet:
    """An ImageSet over ``image_dir / name`` with the ``header`` columns (sex, age band, view)
    that have a value; files are checked only when ``image_dir`` is set."""
    paths = [str(Path(image_dir) / n) for n in names] if image_dir is not None else names
    check_files(paths if image_dir is not None else [], ids)
    manifest = with_header_columns(make_manifest(ids, paths, patients), header.loc[:, header.astype(bool).any()])
    return ImageSet(manifest, tuple(label_names), labels, mask)
