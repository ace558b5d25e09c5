"""One config for every data source, and the data-root setting that configs refer to.

Paths may start with ``{data_dir}``, which expands to ``$CXR_DATA_DIR`` (default: the
``shared/data`` folder beside the project checkout), so one setting moves all configs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cxr.data.imageset import ImageSet
from cxr.data.merge import merge_datasets
from cxr.data.label_tables import LabelPolicy, TableFilter, read_chexpert_table, read_mimic_table, read_nih_table
from cxr.data.sources import read_class_folders, read_csv_table, read_image_folder, read_medmnist_npz
from cxr.registry import Registry

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"
SOURCES = Registry("data source")
register_source = SOURCES.register
SourceName = SOURCES.choice()


def data_dir() -> Path:
    """``$CXR_DATA_DIR``, or ``../shared/data`` beside the project."""
    return Path(os.environ.get("CXR_DATA_DIR", DEFAULT_DATA_DIR))


def resolve_path(path: str) -> Path:
    """Expand ``{data_dir}`` and ``~`` in a configured path."""
    return Path(path.replace("{data_dir}", str(data_dir()))).expanduser()


def applies_filters(*names: str) -> Callable:
    """Mark a source with the ``data.filter`` fields it applies; setting any other is a config error."""
    def mark(source: Callable) -> Callable:
        source.filters = names
        return source
    return mark


TABLE_FILTERS = tuple(TableFilter.model_fields)


class IngestConfig(BaseModel):
    """Where the images are and how to read their labels (``parameters.data`` in YAML).

    ``source``: ``folders`` (one sub-folder per class), ``images`` (flat unlabelled folder),
    ``csv`` (table + image folder), ``medmnist`` (``.npz``), ``nih`` (a ChestX-ray14
    ``Data_Entry`` table + image folder) or ``chexpert`` (``train.csv`` + the folder its
    ``Path`` column is relative to) or ``mimic_cxr_jpg`` (the CheXpert-labeller and metadata CSVs
    of MIMIC-CXR-JPG + the folder holding ``files/``).
    """

    model_config = ConfigDict(extra="forbid")

    source: SourceName = Field(description="a registered source: folders, images, csv, nih, chexpert, "
                                               "mimic_cxr_jpg, medmnist")
    path: str | None = Field(None, description="class-folder root, image folder, CSV file or .npz file "
                                               "(every source but merged)")
    image_dir: str | None = Field(None, description="csv, nih, chexpert: folder holding the images")
    negative_class: str | None = Field(None, description="folders: class folder with no label column")
    patient_id_pattern: str | None = Field(None, description="regex; group 1 of the id is the patient")
    id_column: str = "id"
    label_columns: list[str] | None = None
    path_column: str | None = None
    patient_column: str | None = None
    image_suffix: str = Field("", description="csv without path_column: file = id + suffix")
    encoding: str = Field("utf-8", description="csv: the table's text encoding, e.g. latin-1")
    split: str = Field("train", description="medmnist: train, val or test")
    label_names: list[str] = Field(default_factory=list,
                                   description="images: label columns to predict; medmnist: names")
    policy: LabelPolicy = Field(default_factory=LabelPolicy, description="chexpert, mimic_cxr_jpg: uncertain and "
                                                                         "blank cells")
    filter: TableFilter = Field(default_factory=TableFilter, description="nih, chexpert: view and patient filters; "
                                                                         "folders, images: view_positions of DICOM files")
    recursive: bool = Field(False, description="folders, images: also read images in sub-folders")
    id_salt_file: str | None = Field(None, description="file holding the secret that keys DICOM id hashes, "
                                                       "when $CXR_ID_SALT is not set")
    metadata: str | None = Field(None, description="nih: the full Data_Entry table, joined on Image Index for "
                                 "the sex, age band and view of subgroup reports when data.path lacks them; "
                                 "mimic_cxr_jpg: the metadata CSV (one row per image)")
    split_table: str | None = Field(None, description="mimic_cxr_jpg: the official split CSV (dicom_id, split), "
                                    "whose rows filter.splits keeps")

    sources: list["DatasetEntry"] | None = Field(None, description="merged: the datasets, each a name and its data")
    finding_map: dict[str, str] = Field(default_factory=dict, description="merged: a dataset's finding name -> the "
                                        "merged name, e.g. {Effusion: Pleural Effusion}")

    @model_validator(mode="after")
    def _check(self) -> "IngestConfig":
        if self.source == "merged":
            if not self.sources or len(self.sources) < 2:
                raise ValueError("data.source 'merged' needs data.sources: at least two {name, data} entries")
            names = [entry.name for entry in self.sources]
            if len(set(names)) < len(names):
                raise ValueError(f"data.sources names must differ, got {names}")
            return self
        if self.path is None:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        applied = getattr(SOURCES.get(self.source), "filters", ())
        ignored = [name for name, value in self.filter if value not in (None, False) and name not in applied]
        if ignored:
            applied = ", ".join(applied) or "none"
            raise ValueError(f"data.filter.{ignored[0]} is not applied by data.source {self.source!r} "
                             f"(the filters it applies: {applied})")
        if self.sources or self.finding_map:
            raise ValueError(f"data.sources and data.finding_map belong to source 'merged', not {self.source!r}")
        if self.source == "csv" and not self.image_dir:
            raise ValueError("data.image_dir is required when data.source is 'csv'")
        if self.source in ("nih", "chexpert", "mimic_cxr_jpg") and not self.image_dir:
            raise ValueError(f"data.image_dir is required when data.source is {self.source!r}")
        if self.metadata and self.source not in ("nih", "mimic_cxr_jpg"):
            raise ValueError(f"data.metadata joins an NIH Data_Entry or MIMIC metadata table; data.source is "
                             f"{self.source!r}")
        if self.source == "mimic_cxr_jpg" and not self.metadata:
            raise ValueError("data.metadata (mimic-cxr-2.0.0-metadata.csv) is required when data.source is "
                             "'mimic_cxr_jpg'")
        if self.split_table and self.source != "mimic_cxr_jpg":
            raise ValueError(f"data.split_table is MIMIC-CXR-JPG's official split; data.source is {self.source!r}")
        return self


class DatasetEntry(BaseModel):
    """One dataset of a merged source: its short name (prefixed to its ids and patients) and data."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    data: IngestConfig


IngestConfig.model_rebuild()


class ExternalSet(BaseModel):
    """One entry of ``parameters.external``: a named image set from another site, scored like
    val when labelled (only predicted when not), never trained on."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="short name: MLflow metrics external/<name>/*")
    data: IngestConfig

    @model_validator(mode="after")
    def _check(self) -> "ExternalSet":
        if self.name in ("train", "val", "proxy", "test"):
            raise ValueError(f"external set name {self.name!r} is taken by a split: choose another")
        return self


@register_source("folders")
@applies_filters("view_positions")
def folders_source(cfg: IngestConfig) -> ImageSet:
    """One sub-folder per class; ``negative_class`` gets no label column."""
    return read_class_folders(resolve_path(cfg.path), cfg.negative_class, cfg.patient_id_pattern,
                              recursive=cfg.recursive, view_positions=cfg.filter.view_positions,
                              salt_file=cfg.id_salt_file)


@register_source("images")
@applies_filters("view_positions")
def images_source(cfg: IngestConfig) -> ImageSet:
    """A flat, unlabelled folder (test or inference images)."""
    return read_image_folder(resolve_path(cfg.path), cfg.label_names, recursive=cfg.recursive,
                             view_positions=cfg.filter.view_positions, salt_file=cfg.id_salt_file)


@register_source("csv")
def csv_source(cfg: IngestConfig) -> ImageSet:
    """A label table plus the folder of its images."""
    return read_csv_table(resolve_path(cfg.path), resolve_path(cfg.image_dir), cfg.id_column, cfg.label_columns,
                          cfg.path_column, cfg.patient_column, cfg.image_suffix, cfg.encoding)


def table_filter(cfg: IngestConfig) -> TableFilter:
    """``cfg.filter`` with its image list's path resolved."""
    listed = cfg.filter.image_list
    return cfg.filter.model_copy(update={"image_list": str(resolve_path(listed))}) if listed else cfg.filter


@register_source("nih")
@applies_filters(*TABLE_FILTERS)
def nih_source(cfg: IngestConfig) -> ImageSet:
    """A ChestX-ray14 ``Data_Entry`` table plus its image folder."""
    return read_nih_table(resolve_path(cfg.path), resolve_path(cfg.image_dir), table_filter(cfg),
                          resolve_path(cfg.metadata) if cfg.metadata else None)


@register_source("chexpert")
@applies_filters(*TABLE_FILTERS)
def chexpert_source(cfg: IngestConfig) -> ImageSet:
    """CheXpert ``train.csv`` plus the folder its ``Path`` column is relative to."""
    return read_chexpert_table(resolve_path(cfg.path), resolve_path(cfg.image_dir), cfg.policy, table_filter(cfg))


@register_source("mimic_cxr_jpg")
@applies_filters(*TABLE_FILTERS)
def mimic_source(cfg: IngestConfig) -> ImageSet:
    """MIMIC-CXR-JPG: the CheXpert-labeller CSV, the metadata CSV, [the official split CSV] and the
    folder holding ``files/``."""
    return read_mimic_table(resolve_path(cfg.path), resolve_path(cfg.metadata), resolve_path(cfg.image_dir),
                            resolve_path(cfg.split_table) if cfg.split_table else None, cfg.policy, table_filter(cfg))


@register_source("medmnist")
def medmnist_source(cfg: IngestConfig) -> ImageSet:
    """One split of a MedMNIST ``.npz``."""
    return read_medmnist_npz(resolve_path(cfg.path), cfg.split, cfg.label_names or None)


@register_source("merged")
def merged_source(cfg: IngestConfig) -> ImageSet:
    """Several datasets in one set: findings harmonised by ``finding_map`` to their union, masked where a
    dataset does not label them, ids and patients prefixed by the dataset's name."""
    return merge_datasets({entry.name: read_source(entry.data) for entry in cfg.sources}, cfg.finding_map)


def read_source(cfg: IngestConfig) -> ImageSet:
    """Read the configured source into an ImageSet (every row in split 'all')."""
    return SOURCES.create(cfg.source, cfg)
