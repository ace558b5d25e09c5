"""One ImageSet storage format: what is saved loads back equal, skipped files included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.imageset import ImageSet, load_imageset, make_manifest, save_imageset


def partly_known_set() -> ImageSet:
    manifest = make_manifest(["a", "b", "c"], ["/x/a.png", "/x/b.png", "/x/c.png"], ["p1", "p1", "p2"])
    labels = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
    mask = np.array([[True, False], [True, True], [False, True]])
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    skipped = ({"id": "d", "path": "/x/d.png", "reason": "corrupt"},)
    return ImageSet(manifest, ("opacity", "effusion"), labels, mask, images, skipped)


def assert_same(got: ImageSet, want: ImageSet) -> None:
    pd.testing.assert_frame_equal(got.manifest, want.manifest)
    assert got.label_names == want.label_names and got.skipped == want.skipped
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_array_equal(got.images, want.images)


def test_save_then_load_round_trips_labels_masks_images_and_skipped(tmp_path: Path):
    data = partly_known_set()
    save_imageset(data, str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {"manifest.parquet", "images.npy", "meta.json"}
    assert_same(load_imageset(str(tmp_path)), data)
    assert load_imageset(str(tmp_path)).fingerprint() == data.fingerprint()


def test_memory_mapped_load_is_read_only_and_equal(tmp_path: Path):
    data = partly_known_set()
    save_imageset(data, str(tmp_path))
    mapped = load_imageset(str(tmp_path), mmap=True)
    assert isinstance(mapped.images, np.memmap) and not mapped.images.flags.writeable
    assert_same(mapped, data)


def test_an_undecoded_set_stores_no_image_array(tmp_path: Path):
    data = partly_known_set()
    bare = ImageSet(data.manifest, data.label_names, data.labels, data.mask)
    save_imageset(bare, str(tmp_path))
    assert not (tmp_path / "images.npy").exists() and load_imageset(str(tmp_path)).images is None
