"""Decoding (8/16-bit, gray/RGB/RGBA), resizing policies, CLAHE and the parallel preprocess."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxr.data.decode import decode_gray, resize_square
from cxr.data.preprocess import PreprocessConfig, prepare_image, preprocess_imageset
from cxr.data.decode import IMAGE_EXTENSIONS
from cxr.data.sources import read_class_folders, read_image_folder
from cxr.features.clahe import apply_clahe
from tests.helpers import pil_gray


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
    windowed = np.round((sixteen.astype(np.float64) - 1000) * 255 / (sixteen.max() - 1000)).astype(np.uint8)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, windowed)


def test_colour_rgba_decodes_to_601_gray_of_the_colour_channels_whatever_the_alpha(tmp_path: Path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    expected = np.round(rgb.astype(np.float64) @ [0.299, 0.587, 0.114])
    for name, alpha in (("opaque.png", 255), ("translucent.png", rng.integers(0, 256, (30, 40)))):
        Image.fromarray(np.dstack([rgb, np.broadcast_to(alpha, (30, 40))]).astype(np.uint8), "RGBA").save(
            tmp_path / name)
        decoded = decode_gray(tmp_path / name).astype(np.float64)
        assert np.abs(decoded - expected).max() <= 1  # OpenCV's 14-bit fixed-point weights round differently
        assert np.abs(decoded - expected).mean() < 0.05
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(decode_gray(tmp_path / "rgb.png"), decode_gray(tmp_path / "opaque.png"))


def test_real_nih_rgba_pngs_decode_to_the_gray_of_their_colour_channels(real_data_dir: Path):
    pngs = sorted((real_data_dir / "nih1000-64").rglob("*.png"))
    rgba = [p for p in pngs if Image.open(p).mode == "RGBA"]
    assert len(pngs) == 1000 and len(rgba) == 21
    for path in rgba:
        np.testing.assert_array_equal(decode_gray(path), pil_gray(path), err_msg=str(path))


def test_real_full_resolution_images_decode_whole_and_preprocess_to_the_configured_size(real_data_dir: Path):
    files = sorted(p for p in (real_data_dir / "covid-fullres").rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    sizes = [Image.open(p).size for p in files]
    assert len(files) == 61 and max(w for w, _ in sizes) == 3604 and min(min(s) for s in sizes) == 224
    for path in files:
        np.testing.assert_array_equal(decode_gray(path), pil_gray(path), err_msg=str(path))
    folder = real_data_dir / "covid-fullres" / "figure1" / "images"
    images = read_image_folder(folder)
    out = preprocess_imageset(images, PreprocessConfig(image_size=64, clahe=False), progress=False)
    assert out.images.shape == (len(images), 64, 64) and out.ids == images.ids
    wide = images.ids.index("COVID-00020")  # 844 x 480: padded above and below, not stretched
    band = round((844 - 480) / 2 * 64 / 844)
    assert out.images[wide, :band - 1].max() == 0 and out.images[wide, -(band - 1):].max() == 0
    assert (out.images[wide, band + 1:-(band + 1)].max(axis=1) > 0).all()


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
    resized = preprocess_imageset(decoded, PreprocessConfig(image_size=24, clahe=False), progress=False)
    expected = [cv2.resize(image, (24, 24), interpolation=cv2.INTER_AREA) for image in decoded.images]
    np.testing.assert_array_equal(resized.images, np.stack(expected))


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
