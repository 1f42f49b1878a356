"""Preprocessing: exact letterbox geometry, exact bytes, every image mode, and bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import photo_like, write_jpeg
from qcal.preprocess import (BadImageError, Profile, image_to_raw, letterbox_geometry, letterbox_image,
                             load_rgb, main, resolve_profile)

YOLO = resolve_profile("yolov5")


def numpy_reference(image: Image.Image, profile: Profile) -> np.ndarray:
    """What a careful numpy implementation of the profile produces, as NHWC float32."""
    boxed, _ = letterbox_image(image.convert("RGB"), profile)
    x = np.asarray(boxed, dtype=np.float32)
    if profile.channel_order == "BGR":
        x = x[..., ::-1]
    mean = np.array(profile.mean, np.float32)
    std = np.array(profile.std, np.float32)
    if profile.channel_order == "BGR":
        mean, std = mean[::-1], std[::-1]
    return ((x / np.float32(profile.divisor) - mean) / std).astype(np.float32)


def read_raw(path: Path, profile: Profile) -> np.ndarray:
    dtype = np.float32 if profile.dtype == "float32" else np.uint8
    data = np.fromfile(path, dtype=dtype)
    if profile.layout == "NCHW":
        return data.reshape(3, profile.height, profile.width).transpose(1, 2, 0)
    return data.reshape(profile.height, profile.width, 3)


def test_letterbox_never_a_pixel_short():
    # create_raw.py's int() truncation gave 640x479 for 303x227 and 639-pixel sides for 191 sizes.
    for w in range(1, 1300, 7):
        for h in range(1, 1300, 11):
            g = letterbox_geometry(w, h, 640, 640)
            assert g.resized_width + g.pad_left + g.pad_right == 640
            assert g.resized_height + g.pad_top + g.pad_bottom == 640
            assert max(g.resized_width, g.resized_height) == 640
            assert abs(g.pad_left - g.pad_right) <= 1 and abs(g.pad_top - g.pad_bottom) <= 1


def test_letterbox_geometry_matches_yolov5():
    g = letterbox_geometry(303, 227, 640, 640)
    assert (g.resized_width, g.resized_height) == (640, 479)  # round(227 * 640/303) = round(479.47)
    assert (g.pad_top, g.pad_bottom, g.pad_left, g.pad_right) == (80, 81, 0, 0)
    g = letterbox_geometry(1280, 720, 640, 384)
    assert (g.resized_width, g.resized_height, g.pad_top, g.pad_bottom) == (640, 360, 12, 12)


def test_raw_bytes_equal_numpy_reference_and_padding_is_centred_gray(tmp_path):
    image = photo_like(303, 227, seed=1)
    src = tmp_path / "a.png"
    image.save(src)
    result = image_to_raw(src, tmp_path / "a.raw", tmp_path / "a.json", YOLO)
    assert result.status == "ok"
    assert (tmp_path / "a.raw").stat().st_size == 640 * 640 * 3 * 4
    got = read_raw(tmp_path / "a.raw", YOLO)
    np.testing.assert_array_equal(got, numpy_reference(image, YOLO))
    gray = np.float32(114) / np.float32(255)
    assert np.all(got[:80] == gray) and np.all(got[-81:] == gray)  # top and bottom bands
    assert not np.all(got[80:-81] == gray)
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["letterbox"]["orig_width"] == 303 and meta["letterbox"]["pad_bottom"] == 81


@pytest.mark.parametrize("overrides", [
    {"layout": "NCHW"},
    {"dtype": "uint8"},
    {"dtype": "uint8", "layout": "NCHW"},
    {"channel_order": "BGR", "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 0.125]},
    {"height": 320, "width": 480, "resize": "stretch"},
])
def test_layouts_dtypes_and_normalisation(tmp_path, overrides):
    profile = resolve_profile("yolov5", overrides)
    image = photo_like(200, 120, seed=2)
    image.save(tmp_path / "x.png")
    image_to_raw(tmp_path / "x.png", tmp_path / "x.raw", tmp_path / "x.json", profile)
    assert (tmp_path / "x.raw").stat().st_size == profile.nbytes
    got = read_raw(tmp_path / "x.raw", profile)
    if profile.dtype == "uint8":
        want = np.asarray(letterbox_image(image, profile)[0], np.uint8)
        np.testing.assert_array_equal(got, want)
    elif "mean" in overrides:  # qcal rounds once from double; float32 numpy rounds at every step
        np.testing.assert_allclose(got, numpy_reference(image, profile), rtol=1e-6)
    else:
        np.testing.assert_array_equal(got, numpy_reference(image, profile))


def test_float_conversion_is_exact_for_every_byte_value(tmp_path):
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16).repeat(3).reshape(16, 16, 3))
    profile = resolve_profile("yolov5", {"height": 16, "width": 16})
    ramp.save(tmp_path / "ramp.png")
    image_to_raw(tmp_path / "ramp.png", tmp_path / "r.raw", tmp_path / "r.json", profile)
    got = read_raw(tmp_path / "r.raw", profile)[..., 0].ravel()
    np.testing.assert_array_equal(got, np.arange(256, dtype=np.float32) / np.float32(255))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_every_colour_mode_becomes_rgb(tmp_path, mode):
    image = photo_like(64, 48, seed=3, mode=mode)
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    image.save(path)
    rgb, _, _ = load_rgb(path, YOLO.max_pixels)
    assert rgb.mode == "RGB" and rgb.size == (64, 48)
    if mode == "L":
        r, g, b = (np.asarray(c) for c in rgb.split())
        assert np.array_equal(r, g) and np.array_equal(g, b)


def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path):
    values = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    rgb, _, _ = load_rgb(tmp_path / "deep.png", YOLO.max_pixels)
    r = np.asarray(rgb)[..., 0].astype(int)
    np.testing.assert_allclose(r, values / 257, atol=1)  # a plain convert() would clip to 255


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise: portrait
    write_jpeg(path, 300, 200, exif=exif)
    result = image_to_raw(path, tmp_path / "r.raw", tmp_path / "r.json", YOLO)
    assert result.exif_orientation == 6
    assert (result.letterbox["orig_width"], result.letterbox["orig_height"]) == (200, 300)
    assert result.letterbox["pad_left"] > 0 and result.letterbox["pad_top"] == 0


def corrupt_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    good = write_jpeg(folder / "good.jpg", 320, 240).read_bytes()
    files = {"zero-byte": b"", "text named .jpg": b"this is not an image\n",
             "truncated": good[: len(good) // 2], "garbage after header": good[:200] + bytes(range(256)) * 20}
    paths = {}
    for i, (what, data) in enumerate(files.items()):
        paths[what] = folder / f"bad{i}.jpg"
        paths[what].write_bytes(data)
    return paths


def test_bad_images_fail_with_the_file_named(tmp_path):
    for what, path in corrupt_files(tmp_path / "in").items():
        with pytest.raises(BadImageError) as err:
            image_to_raw(path, tmp_path / "o.raw", tmp_path / "o.json", YOLO)
        assert str(path) in str(err.value), what
        assert not (tmp_path / "o.raw").exists(), f"{what}: a raw was written for a bad image"


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (4000, 3000)).save(path)
    profile = resolve_profile("yolov5", {"max_pixels": 10_000_000})
    with pytest.raises(BadImageError, match="12,000,000 pixels is over the limit"):
        image_to_raw(path, tmp_path / "o.raw", tmp_path / "o.json", profile)


def test_skip_mode_writes_a_skipped_sidecar_and_an_empty_raw(tmp_path):
    path = corrupt_files(tmp_path / "in")["truncated"]
    result = image_to_raw(path, tmp_path / "o.raw", tmp_path / "o.json", YOLO, on_bad_image="skip")
    assert result.status == "skipped" and "truncated" in result.error
    assert (tmp_path / "o.raw").stat().st_size == 0
    assert json.loads((tmp_path / "o.json").read_text())["status"] == "skipped"


def test_cli_reports_bad_image_in_one_line(tmp_path, capsys):
    path = corrupt_files(tmp_path / "in")["zero-byte"]
    assert main([str(path), str(tmp_path / "o.raw"), str(tmp_path / "o.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "not a decodable image" in err


def test_cli_names_the_image_by_its_path_under_the_image_root(tmp_path):
    root = tmp_path / "my photos"
    path = write_jpeg(root / "street scenes" / "bus stop.jpg", 48, 32)
    assert main([str(path), str(tmp_path / "o.raw"), str(tmp_path / "o.json"), "--image-root", str(root)]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["image"] == "street scenes/bus stop.jpg"
    assert main([str(path), str(tmp_path / "o.raw"), str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["image"] == "bus stop.jpg"


def test_profile_errors_name_the_field():
    with pytest.raises(ValueError, match="layout"):
        resolve_profile("yolov5", {"layout": "NHCW"})
    with pytest.raises(ValueError, match="unknown preprocessing profile 'yolo'"):
        resolve_profile("yolo")
    with pytest.raises(TypeError):
        resolve_profile("yolov5", {"heigth": 10})


def test_no_temporary_files_are_left_behind(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    image_to_raw(tmp_path / "a.jpg", tmp_path / "out" / "a.raw", tmp_path / "out" / "a.json", YOLO)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json", "a.raw"]


def test_little_endian_float32_on_disk(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    profile = resolve_profile("yolov5", {"height": 8, "width": 8})
    image_to_raw(tmp_path / "red.png", tmp_path / "r.raw", tmp_path / "r.json", profile)
    first = struct.unpack("<3f", (tmp_path / "r.raw").read_bytes()[:12])
    assert first == (1.0, 0.0, 0.0)
