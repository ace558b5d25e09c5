"""Sharded, memory-mapped image storage: reads equal the in-memory array, views and hashes read no
pixels, preprocessing into shards holds a shard's worth of memory, and ImageSets round-trip."""

from __future__ import annotations

import gc
import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cxr.data.imageset import ImageSet, load_imageset, make_manifest, save_imageset
from cxr.data.ingest import IngestConfig, read_source
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.leakage import fingerprints
from cxr.data.shards import INDEX_FILE, ShardedImages, ShardWriter, concat_images, scratch_folder, write_shards
from cxr.ssl.pretrain import with_target
from tests.helpers import write_class_tree


def stored(tmp_path: Path, images: np.ndarray, shard_size: int = 3) -> ShardedImages:
    writer = ShardWriter(str(tmp_path), images.shape[1:], shard_size)
    writer.extend(images)
    writer.close()
    return ShardedImages(str(tmp_path))


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (10, 6, 5), dtype=np.uint8)


def test_every_kind_of_read_equals_the_in_memory_array(tmp_path: Path, pixels: np.ndarray):
    images = stored(tmp_path, pixels)
    assert images.shape == pixels.shape and len(images) == 10 and sorted(os.listdir(tmp_path))[-1] == INDEX_FILE
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".npy")]) == 4
    mask = pixels[:, 0, 0] > 128
    for key in (3, -1, slice(2, 9), slice(None, None, -2), [9, 0, 4, 4], np.array([7, 2]), mask, (5, 1), (slice(1, 3), 2)):
        np.testing.assert_array_equal(images[key], pixels[key])
    np.testing.assert_array_equal(np.asarray(images), pixels)
    np.testing.assert_array_equal(np.stack(list(images)), pixels)
    np.testing.assert_array_equal(np.concatenate([images, pixels[:2]]), np.concatenate([pixels, pixels[:2]]))
    with pytest.raises(IndexError):
        images[[10]]


def test_a_truncated_shard_is_named_in_the_error(tmp_path: Path, pixels: np.ndarray):
    images = stored(tmp_path, pixels)
    shard = tmp_path / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-45])
    np.testing.assert_array_equal(images[3], pixels[3])
    with pytest.raises(OSError, match="shard-00001.npy is truncated: read 15 of 60 bytes at row 1"):
        images[4:6]


def test_a_view_reads_no_pixels_and_maps_through_its_rows(tmp_path: Path, pixels: np.ndarray):
    images = stored(tmp_path, pixels)
    for name in os.listdir(tmp_path):
        if name.endswith(".npy"):
            os.rename(tmp_path / name, tmp_path / (name + ".away"))
    view = images.take([8, 1, 5]).take([2, 0])
    assert view.shape == (2, 6, 5) and view.is_view
    for name in os.listdir(tmp_path):
        if name.endswith(".away"):
            os.rename(tmp_path / name, tmp_path / name[:-5])
    np.testing.assert_array_equal(view[:], pixels[[5, 8]])


def test_sets_join_into_new_shards_and_views_pickle_without_their_open_files(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CXR_SCRATCH_DIR", str(tmp_path / "scratch"))
    pixels = np.random.default_rng(1).integers(0, 256, (10, 32, 32), dtype=np.uint8)
    images = stored(tmp_path, pixels)
    joined = concat_images([images.take([9, 2]), pixels[:3]])
    assert isinstance(joined, ShardedImages) and joined.folder.startswith(str(tmp_path / "scratch"))
    np.testing.assert_array_equal(joined[:], np.concatenate([pixels[[9, 2]], pixels[:3]]))
    assert isinstance(concat_images([pixels, pixels[:1]]), np.ndarray)
    pool, pairs = with_target(images, pixels[:2], np.array([[0, 1]]))  # domain-adaptive SSL's pool
    assert isinstance(pool, ShardedImages) and len(pool) == 12 and pairs.tolist() == [[0, 1], [10, 10], [11, 11]]
    copy = pickle.loads(pickle.dumps(images.take([4, 0])))
    assert copy._files is not images._files and copy.owner is None
    np.testing.assert_array_equal(copy[:], pixels[[4, 0]])
    on_disk, in_memory = fingerprints(images), fingerprints(pixels)
    np.testing.assert_array_equal(on_disk.hashes, in_memory.hashes)
    np.testing.assert_array_equal(on_disk.thumbnails, in_memory.thumbnails)
    assert list(on_disk.digests) == list(in_memory.digests) == images.digests()


def test_the_content_hash_comes_from_the_write_and_equals_the_in_memory_sets(tmp_path: Path, pixels: np.ndarray):
    manifest = make_manifest([f"i{k}" for k in range(10)], [f"/x/{k}.png" for k in range(10)])
    labels, mask = np.eye(10, 2, dtype=np.float32), np.ones((10, 2), bool)
    in_memory = ImageSet(manifest, ("a", "b"), labels, mask, pixels)
    sharded = ImageSet(manifest, ("a", "b"), labels, mask, stored(tmp_path, pixels))
    for name in os.listdir(tmp_path):
        if name.endswith(".npy"):
            (tmp_path / name).unlink()
    assert sharded.content_hash() == in_memory.content_hash()
    assert sharded.subset([4, 2]).content_hash() == in_memory.subset([4, 2]).content_hash()
    assert sharded.subset([4, 2]).fingerprint() != sharded.subset([2, 4]).fingerprint()


def test_imagesets_round_trip_whole_views_and_remote_stores(tmp_path: Path, pixels: np.ndarray):
    (tmp_path / "store").mkdir()
    manifest = make_manifest([f"i{k}" for k in range(10)], [f"/x/{k}.png" for k in range(10)])
    data = ImageSet(manifest, (), np.zeros((10, 0), np.float32), np.zeros((10, 0), bool),
                    stored(tmp_path / "store", pixels))
    for name, part in (("whole", data), ("view", data.subset([9, 3, 4, 0]))):
        folder = tmp_path / name
        folder.mkdir()
        save_imageset(part, str(folder))
        assert not (folder / "images.npy").exists() and (folder / INDEX_FILE).exists()
        back = load_imageset(str(folder))
        assert isinstance(back.images, ShardedImages) and not back.images.is_view
        np.testing.assert_array_equal(back.images[:], np.asarray(part.images))
        assert back.content_hash() == part.content_hash() and back.fingerprint() == part.fingerprint()
    remote = {"opened": []}

    def open_remote(path: str, mode: str):
        remote["opened"].append(os.path.basename(path))
        return open(str(tmp_path / "whole" / path.removeprefix("s3://bucket/")), mode)

    back = load_imageset("s3://bucket", open_remote, lambda p: (tmp_path / "whole" / p.removeprefix("s3://bucket/")).exists())
    np.testing.assert_array_equal(back.images[:], pixels)
    assert back.images.folder != str(tmp_path / "whole") and "shard-00003.npy" in remote["opened"]


def test_a_scratch_store_is_deleted_with_its_last_holder(tmp_path: Path, pixels: np.ndarray, monkeypatch):
    monkeypatch.setenv("CXR_SCRATCH_DIR", str(tmp_path / "scratch"))
    folder, token = scratch_folder()
    write_shards(pixels, folder, shard_size=4)
    view = ShardedImages(folder, owner=token).take([1, 2])
    del token
    gc.collect()
    assert os.path.isdir(folder)
    np.testing.assert_array_equal(view[:], pixels[[1, 2]])
    del view
    gc.collect()
    assert not os.path.exists(folder)


def test_preprocessing_into_shards_gives_the_same_pixels_and_holds_a_shards_worth_of_memory(tmp_path: Path):
    write_class_tree(tmp_path / "tree", n_per_class=150, size=96)
    data = read_source(IngestConfig(source="folders", path=str(tmp_path / "tree"), negative_class="NORMAL"))
    base = dict(image_size=128, num_workers=2)
    peaks = {}
    for storage in ("memory", "shards"):
        tracemalloc.start()
        out = preprocess_imageset(data, PreprocessConfig(storage=storage, shard_size=8, **base), progress=False)
        peaks[storage] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peaks[storage + "_set"] = out
    memory, shards = peaks["memory_set"], peaks["shards_set"]
    assert isinstance(shards.images, ShardedImages) and isinstance(memory.images, np.ndarray)
    np.testing.assert_array_equal(shards.images[:], memory.images)
    assert shards.content_hash() == memory.content_hash()
    all_pixels = 300 * 128 * 128
    assert peaks["memory"] >= all_pixels and peaks["shards"] < all_pixels / 4, peaks


def test_auto_storage_switches_to_shards_at_the_configured_size(tmp_path: Path):
    write_class_tree(tmp_path / "tree", n_per_class=5, size=48)
    data = read_source(IngestConfig(source="folders", path=str(tmp_path / "tree"), negative_class="NORMAL"))
    small = preprocess_imageset(data, PreprocessConfig(image_size=32, shards_from=11), progress=False)
    large = preprocess_imageset(data, PreprocessConfig(image_size=32, shards_from=10), progress=False)
    assert isinstance(small.images, np.ndarray) and isinstance(large.images, ShardedImages)


def test_a_corrupt_file_is_left_out_of_the_shards_under_skip_corrupt(tmp_path: Path):
    write_class_tree(tmp_path / "tree", n_per_class=6, size=48)
    bad = sorted((tmp_path / "tree" / "NORMAL").iterdir())[2]
    bad.write_bytes(b"not an image")
    data = read_source(IngestConfig(source="folders", path=str(tmp_path / "tree"), negative_class="NORMAL"))
    cfg = dict(image_size=32, shard_size=4, skip_corrupt=True)
    shards = preprocess_imageset(data, PreprocessConfig(storage="shards", **cfg), progress=False)
    memory = preprocess_imageset(data, PreprocessConfig(storage="memory", **cfg), progress=False)
    assert len(shards) == 11 and [s["path"] for s in shards.skipped] == [str(bad)]
    np.testing.assert_array_equal(shards.images[:], memory.images)
    assert shards.ids == memory.ids
