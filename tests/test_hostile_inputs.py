"""Hostile and unusual inputs against the real workflow: every case either works or is refused with one
line that names the file (or config key) and what to do; nothing hangs, nothing in the image folder is
touched, and a changed image is rebuilt whatever its file times say."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import jobs_run, photo_like, snakemake, write_jpeg
from qcal.synthetic import build_tiny

SIZE = 64
LIST = "results/input_list.txt"
REPORTS = ["results/reports/skipped_images.tsv", "results/reports/image_warnings.tsv"]


def exif_orientation_bytes(tag_type: int, value) -> bytes:
    """An EXIF block whose only entry is the orientation tag, stored with the given TIFF type: 5 is a
    RATIONAL (value a (numerator, denominator) pair), 7 raw bytes (value a bytes object)."""
    entry = struct.pack("<HHI", 0x0112, tag_type, 1)
    entry += struct.pack("<I", 26) if tag_type == 5 else value.ljust(4, b"\0")
    data = struct.pack("<II", *value) if tag_type == 5 else b""
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + b"\0\0\0\0" + data


def tree_snapshot(folder: Path) -> dict[str, tuple]:
    out = {}
    for p in folder.rglob("*"):
        info = p.lstat()
        out[str(p.relative_to(folder))] = (info.st_size, info.st_mtime_ns, info.st_mode)
    return out


def rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t"))[1:]


def listed_images(work: Path) -> list[str]:
    return [row[0] for row in rows(work / "results/raw_index.tsv")]


# --------------------------------------------------------------------------------------------------
# One corpus, one skip-mode run: odd names work, bad files are left out and named, warnings are kept


ODD_NAMES = ["{stem}.jpg", "$HOME${IFS}.jpg", "new\nline.jpg", "back\\slash.jpg", "-leading dash.jpg",
             "#hash&amp;.jpg", "star*?[x].jpg", "a=b.jpg", "%25 percent.jpg", "tab\tname.JPEG",
             "ünïcødé 图片 " + "long " * 45 + ".jpg"]  # 250+ bytes after percent-encoding


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    images = root / "images"
    for i, name in enumerate(ODD_NAMES):
        write_jpeg(images / name, 60 + i, 40 + i, seed=i)
    write_jpeg(root / "elsewhere" / "linked.jpg", 70, 50, seed=50)
    (images / "linked folder").symlink_to(root / "elsewhere", target_is_directory=True)
    (images / "loop").symlink_to(images, target_is_directory=True)  # a link loop must not recurse forever
    (images / "broken link.jpg").symlink_to(root / "no such file.jpg")
    os.mkfifo(images / "pipe.jpg")
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.png").write_text("not an image")
    good = images / "truncated.jpg"
    write_jpeg(good, 300, 200, seed=7)
    good.write_bytes(good.read_bytes()[:400])
    (images / "folder.jpg").mkdir()  # a folder with an image name is a folder
    write_jpeg(images / "folder.jpg" / "inside.jpg", 50, 50, seed=8)
    photo_like(50, 40, 9).save(images / "rational exif.jpg", exif=exif_orientation_bytes(5, (6, 1)))
    photo_like(50, 40, 10).save(images / "bytes exif.jpg", exif=exif_orientation_bytes(7, b"\x06"))
    frames = [photo_like(40, 30, 11 + k) for k in range(3)]
    frames[0].save(images / "animated.png", save_all=True, append_images=frames[1:])
    photo_like(64, 48, 12, mode="RGBA").save(images / "alpha.png")
    photo_like(64, 48, 13, mode="CMYK").save(images / "cmyk.jpg")
    photo_like(64, 48, 14).save(images / "progressive.jpg", progressive=True)
    photo_like(64, 48, 15).save(images / "png inside.jpg", format="PNG")  # a misnamed PNG decodes
    before = tree_snapshot(images)
    model = root / "tiny.onnx"
    onnx.save(build_tiny(size=(SIZE, SIZE)), model)
    config = {"images": str(images), "model": str(model), "on_bad_image": "skip",
              "preprocess": {"height": SIZE, "width": SIZE}, "evaluation": {"holdout": 0},
              "input_list": {"paths": "relative"}, "search": {"max_drop": None}, "calibration": {"shards": 2}}
    run = snakemake(root / "work", config, "quantize", *REPORTS)
    return root, images, config, run, before


def test_the_corpus_run_finishes_and_touches_no_image(corpus):
    root, images, _, run, before = corpus
    assert tree_snapshot(images) == before
    assert not (images / "results").exists() and not list(images.rglob("*.raw"))


def test_odd_names_are_listed_and_their_raws_are_complete(corpus):
    root, _, _, _, _ = corpus
    work = root / "work"
    listed = set(listed_images(work))
    assert set(ODD_NAMES) | {"linked folder/linked.jpg", "folder.jpg/inside.jpg"} <= listed
    for line in (work / LIST).read_text().splitlines():
        assert len(line.split()) == 1 and (work / line).stat().st_size == SIZE * SIZE * 3 * 4
        assert all(len(part.encode()) <= 255 for part in line.split("/"))
    assert not list(root.rglob("pwned")) and not (work / "HOME").exists()


def test_bad_files_are_left_out_and_named(corpus):
    root, _, _, run, _ = corpus
    skipped = {row[0]: row[2] for row in rows(root / "work/results/reports/skipped_images.tsv")}
    assert "not a regular file" in skipped["pipe.jpg"]
    assert "cannot be read" in skipped["broken link.jpg"]
    assert "not a decodable image" in skipped["empty.jpg"] and "not a decodable image" in skipped["text.png"]
    assert "truncated" in skipped["truncated.jpg"]
    assert not any(name.startswith("loop/") for name in skipped) and len(skipped) == 5
    output = run.stdout + run.stderr
    assert "qcal: 5 images skipped (results/reports/skipped_images.tsv)" in output


def test_used_but_odd_images_get_a_warning(corpus):
    root, _, _, run, _ = corpus
    warned = {row[0]: row[2] for row in rows(root / "work/results/reports/image_warnings.tsv")}
    assert warned == {"animated.png": "3 frames; the first is used",
                      "bytes exif.jpg": "EXIF orientation b'\\x06' is not a number; used as stored"}
    sidecar = json.loads((root / "work/results/raw/rational%20exif.jpg.json").read_text())
    assert sidecar["exif_orientation"] == 6 and sidecar["letterbox"]["orig_width"] == 40  # rotated upright
    assert "2 images used with a warning" in run.stdout + run.stderr


# --------------------------------------------------------------------------------------------------
# Refused at start, in one line, naming the file


def small_project(tmp_path: Path, count: int = 3) -> tuple[Path, dict]:
    images = tmp_path / "images"
    for i in range(count):
        write_jpeg(images / f"img{i}.jpg", 80 + i, 60, seed=i)
    return images, {"images": str(images), "preprocess": {"height": SIZE, "width": SIZE},
                    "evaluation": {"holdout": 0}}


def refused(tmp_path: Path, config: dict, *targets: str) -> str:
    done = snakemake(tmp_path / "work", config, *(targets or (LIST,)), check=False, timeout=120)
    assert done.returncode != 0
    return done.stdout + done.stderr


def test_a_fifo_fails_at_start_instead_of_hanging(tmp_path):
    images, config = small_project(tmp_path)
    os.mkfifo(images / "pipe.jpg")
    output = refused(tmp_path, config)
    assert f"{images / 'pipe.jpg'}: is not a regular file" in output and "on_bad_image: skip" in output
    assert not (tmp_path / "work/results/raw").exists()  # before any job


def test_a_non_utf8_name_is_refused_naming_it(tmp_path):
    images, config = small_project(tmp_path)
    write_jpeg(Path(os.fsdecode(bytes(images) + b"/caf\xe9.jpg")), seed=5)
    output = refused(tmp_path, config)
    assert "caf\\udce9.jpg" in output or "caf\\xe9.jpg" in output
    assert "not valid UTF-8" in output and "rename it" in output


def test_an_image_beside_a_folder_named_like_its_raw_is_refused(tmp_path):
    images, config = small_project(tmp_path)
    write_jpeg(images / "a.jpg", seed=3)
    write_jpeg(images / "a.jpg.raw" / "b.jpg", seed=4)
    output = refused(tmp_path, config)
    assert "a.jpg.raw/b.jpg lies in a folder named like the raw of" in output and "rename the folder" in output


def test_a_project_folder_with_white_space_is_refused_for_absolute_lists(tmp_path):
    _, config = small_project(tmp_path)
    done = snakemake(tmp_path / "my project", config, "-n", LIST, check=False)
    assert done.returncode != 0
    assert "config key 'input_list.paths'" in done.stdout + done.stderr and "white" in done.stdout + done.stderr
    snakemake(tmp_path / "my project", dict(config, input_list={"paths": "relative"}), LIST)


def test_an_operator_onnx_runtime_cannot_run_fails_at_start(tmp_path):
    _, config = small_project(tmp_path)
    nodes = [helper.make_node("Identity", ["images"], ["x"], name="id"),
             helper.make_node("NoSuchOp", ["x"], ["output0"], name="custom", domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 10, 85])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "custom.onnx")
    output = refused(tmp_path, dict(config, model=str(tmp_path / "custom.onnx")), "-n", "quantize")
    assert "config key 'model': ONNX Runtime cannot run" in output and "NoSuchOp" in output


# --------------------------------------------------------------------------------------------------
# Errors at the end of a stage are one clear line too


def test_every_image_bad_under_skip_says_so(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes(b"garbage")
    output = refused(tmp_path, {"images": str(images), "on_bad_image": "skip", "evaluation": {"holdout": 0}})
    assert "no usable calibration image: all 2 were skipped (a.jpg: not a decodable image" in output


def test_a_hold_out_of_only_bad_images_says_what_happened(tmp_path):
    images, config = small_project(tmp_path, count=12)
    from qcal.images import is_held_out

    held = [p for p in sorted(images.glob("*.jpg")) if is_held_out(p.name, 0.2)]
    assert held, "the stable 20% hold-out of these names is not empty"
    for path in held:
        path.write_bytes(b"garbage")
    onnx.save(build_tiny(size=(SIZE, SIZE)), tmp_path / "tiny.onnx")
    output = refused(tmp_path, dict(config, on_bad_image="skip", evaluation={}, model=str(tmp_path / "tiny.onnx"),
                                    search={"max_drop": None}), "evaluate", "results/reports/skipped_images.tsv",
                     "--keep-going")
    assert "no evaluation image could be used (every one was skipped)" in output
    skipped = rows(tmp_path / "work/results/reports/skipped_images.tsv")
    assert {row[0] for row in skipped} == {p.name for p in held} and {row[1] for row in skipped} == {"evaluation"}


def test_a_full_disk_is_named_in_one_line(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    images, config = small_project(tmp_path, count=8)
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(work / "results")], check=True)
    try:
        output = refused(tmp_path, config)
        assert re.search(r"no space left on the device writing \S*results/raw/img\d\.jpg\S*: free some or move "
                         r"results/", output), output[-3000:]
    finally:
        subprocess.run(["umount", str(work / "results")], check=True)


def test_a_stale_temporary_file_is_removed_at_start(tmp_path):
    _, config = small_project(tmp_path)
    stale = tmp_path / "work/results/model/.qcal-abc123.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    snakemake(tmp_path / "work", config, LIST)
    assert not stale.exists()


# --------------------------------------------------------------------------------------------------
# Models that are not what qcal expects


def classifier(with_nan: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((8, 10)).astype(np.float32), "fc")
    shift = numpy_helper.from_array(np.array(-0.5, np.float32), "shift")
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu")]
    last = "r"
    if with_nan:  # the log of a negative number: NaN activations on every image
        nodes += [helper.make_node("Add", ["r", "shift"], ["s"], name="shift"),
                  helper.make_node("Log", ["s"], ["l"], name="log")]
        last = "l"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["f"], name="flat"),
              helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc")]
    graph = helper.make_graph(nodes, "classifier",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [w, fc, shift])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_classifier_is_quantized_and_the_reports_say_it_is_not_a_detector(tmp_path):
    images, config = small_project(tmp_path, count=6)
    onnx.save(classifier(), tmp_path / "classifier.onnx")
    config = dict(config, model=str(tmp_path / "classifier.onnx"), evaluation={"images": str(images)})
    done = snakemake(tmp_path / "work", config, "all")
    output = done.stdout + done.stderr
    assert "decode tail: none: the model's output [1, 10] is not a YOLO-style detection output" in output
    assert "the model is not a YOLO-style detector (its output is [1, 10])" in output
    assert "MISSING" not in (tmp_path / "work/results/reports/coverage.txt").read_text().replace("0 MISSING", "")
    accuracy = json.loads((tmp_path / "work/results/reports/accuracy.json").read_text())
    assert accuracy["detector"] is False and 0 <= accuracy["backends"]["cpu"]["top1_agreement"] <= 1
    assert "top-1 agreement" in output


def test_nan_activations_are_reported(tmp_path):
    _, config = small_project(tmp_path, count=4)
    onnx.save(classifier(with_nan=True), tmp_path / "nan.onnx")
    done = snakemake(tmp_path / "work", dict(config, model=str(tmp_path / "nan.onnx"), search={"max_drop": None}),
                     "quantize")
    summary = json.loads((tmp_path / "work/results/quantize_summary.json").read_text())
    assert set(summary["nonfinite_activations"]) >= {"l"}
    assert re.search(r"warning: \d+ activations held NaN or infinite values", done.stdout + done.stderr)


# --------------------------------------------------------------------------------------------------
# Content, not file times, decides what is rebuilt


def copy_preserving_times(source: Path, target: Path, how: str) -> None:
    """Replace target by source's bytes the way common tools do, leaving target with source's old time."""
    if how == "cp -p":
        shutil.copy2(source, target)
    elif how == "touch -r":
        target.write_bytes(source.read_bytes())
        subprocess.run(["touch", "-r", str(source), str(target)], check=True)
    elif how == "tar x":
        archive = source.parent / "new.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(source, arcname=target.name)
        with tarfile.open(archive) as tar:
            tar.extractall(target.parent, filter="tar")
        archive.unlink()


@pytest.mark.parametrize("how", ["cp -p", "touch -r", "tar x"])
def test_a_changed_image_is_rebuilt_even_with_an_older_file_time(tmp_path, how):
    images, config = small_project(tmp_path, count=3)
    work = tmp_path / "work"
    snakemake(work, config, LIST)
    before = (work / "results/raw/img1.jpg.raw").read_bytes()
    replacement = tmp_path / "elsewhere" / "img1.jpg"
    write_jpeg(replacement, 120, 90, seed=77)
    os.utime(replacement, ns=(10**18, 10**18))  # years before the raw was written
    copy_preserving_times(replacement, images / "img1.jpg", how)
    assert (images / "img1.jpg").stat().st_mtime_ns < (work / "results/raw/img1.jpg.raw").stat().st_mtime_ns
    done = snakemake(work, config, LIST)
    assert jobs_run(done) == {"raw": 1, "input_list": 1}
    assert (work / "results/raw/img1.jpg.raw").read_bytes() != before
    assert snakemake(work, config, "-n", LIST).stdout.count("rule raw") == 0  # and then nothing again


def test_large_photos_pass_the_default_guard_and_the_key_is_honoured(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (9500, 9500), (30, 60, 90)).save(images / "big.png")  # 90 MP: over Pillow's own 89 MP
    config = {"images": str(images), "preprocess": {"height": SIZE, "width": SIZE}, "evaluation": {"holdout": 0}}
    snakemake(tmp_path / "work", config, LIST)
    assert (tmp_path / "work/results/raw/big.png.raw").stat().st_size == SIZE * SIZE * 3 * 4
    config["preprocess"]["max_pixels"] = 50_000_000
    output = refused(tmp_path, config)
    assert "9500x9500 = 90,250,000 pixels is over the limit of 50,000,000" in output
    assert "raise preprocess.max_pixels" in output
