"""Decoding (8/16-bit, gray/RGB/RGBA), resizing policies, CLAHE and the parallel preprocess."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.data.decode import decode_gray, resize_square
from cxr.data.preprocess import PreprocessConfig, prepare_image, preprocess_imageset
from cxr.data.sources import read_class_folders
from cxr.features.clahe import apply_clahe


def test_decode_gray_rgb_rgba_and_16_bit(tmp_path: Path):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (25, 1))
    bgr = np.dstack([gray, gray, gray])
    bgra = np.dstack([bgr, np.full_like(gray, 128)])
    for name, image in (("g.png", gray), ("c.png", bgr), ("a.png", bgra)):
        cv2.imwrite(str(tmp_path / name), image)
        np.testing.assert_array_equal(decode_gray(tmp_path / name), gray)
    sixteen = (gray.astype(np.uint16) * 100 + 1000)
    cv2.imwrite(str(tmp_path / "s.png"), sixteen)
    decoded = decode_gray(tmp_path / "s.png")
    assert decoded.dtype == np.uint8 and decoded.min() == 0 and decoded.max() == 255
    assert (np.diff(decoded[0].astype(int)) > 0).all(), "windowing keeps the order of intensities"


def test_resize_pad_keeps_aspect_and_crop_takes_the_center():
    image = np.zeros((40, 80), np.uint8)
    image[:, 20:60] = 255
    padded = resize_square(image, 20, "pad")
    assert padded.shape == (20, 20) and padded[:5].max() == 0 and padded[10, 10] == 255
    cropped = resize_square(image, 20, "crop")
    assert cropped.shape == (20, 20) and (cropped == 255).all()
    with pytest.raises(ValueError, match="stretch"):
        resize_square(image, 20, "stretch")


def test_clahe_matches_opencv_and_raises_contrast():
    rng = np.random.default_rng(0)
    low_contrast = (100 + rng.normal(0, 5, (64, 64))).clip(0, 255).astype(np.uint8)
    out = apply_clahe(low_contrast, clip_limit=3.0, tile_grid=4)
    expected = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(low_contrast)
    np.testing.assert_array_equal(out, expected)
    assert out.std() > 2 * low_contrast.std()
    with pytest.raises(ValueError, match="uint8"):
        apply_clahe(low_contrast.astype(np.float32))


def test_parallel_preprocess_equals_per_image_loop(class_tree: Path):
    images = read_class_folders(class_tree, "NORMAL")
    cfg = PreprocessConfig(image_size=48, num_workers=2)
    out = preprocess_imageset(images, cfg, progress=False)
    assert out.images.shape == (len(images), 48, 48) and out.images.dtype == np.uint8
    for i in (0, 7, len(images) - 1):
        expected = prepare_image(cv2.imread(images.manifest["path"][i], cv2.IMREAD_GRAYSCALE), cfg)
        np.testing.assert_array_equal(out.images[i], expected)
    assert out.ids == images.ids


def test_preprocess_takes_already_decoded_arrays(class_tree: Path):
    images = read_class_folders(class_tree, "NORMAL")
    decoded = preprocess_imageset(images, PreprocessConfig(image_size=64, clahe=False), progress=False)
    resized = preprocess_imageset(decoded, PreprocessConfig(image_size=32, clahe=False), progress=False)
    assert resized.images.shape == (len(images), 32, 32)


def test_fingerprint_changes_with_images_and_labels(class_tree: Path):
    images = preprocess_imageset(read_class_folders(class_tree, "NORMAL"), PreprocessConfig(image_size=32),
                                 progress=False)
    same = preprocess_imageset(read_class_folders(class_tree, "NORMAL"), PreprocessConfig(image_size=32),
                               progress=False)
    assert images.fingerprint() == same.fingerprint()
    assert images.fingerprint() != images.with_images(images.images[:, ::-1].copy()).fingerprint()
    flipped = images.subset(np.arange(len(images)))
    flipped.labels[0, 0] = 1 - flipped.labels[0, 0]
    assert images.fingerprint() != flipped.fingerprint()


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="image_size"):
        PreprocessConfig(image_size=4)
    with pytest.raises(ValueError, match="clahe_clip"):
        PreprocessConfig(clahe_clip=2.0)
