"""The real workflow on small generated images: incremental rebuilds, bad input, odd names, config errors."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import jobs_run, snakemake, write_jpeg

LIST = "results/input_list.txt"  # the backbone's target; the model stages are tested in test_workflow_quantize
ALL_CALIBRATION = {"evaluation": {"holdout": 0}}  # every image goes to the list (no evaluation hold-out)


def raw_mtimes(workdir: Path) -> dict[str, int]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in (workdir / "results/raw").rglob("*.raw")}


def listed(workdir: Path) -> list[str]:
    return (workdir / "results/input_list.txt").read_text().splitlines()


def tree_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_incremental_rebuilds(tmp_path, tiny_images):
    work = tmp_path / "work"
    config = {"images": str(tiny_images), "preprocess": {"height": 64, "width": 96}, **ALL_CALIBRATION}

    cold = snakemake(work, config, LIST)
    assert jobs_run(cold) == {"raw": 4, "input_list": 1}
    assert len(listed(work)) == 4 and all(line.startswith(str(work)) for line in listed(work))
    for line in listed(work):
        assert os.path.getsize(line) == 64 * 96 * 3 * 4
    before = raw_mtimes(work)
    list_bytes = (work / "results/input_list.txt").read_bytes()

    noop = snakemake(work, config, LIST)
    assert "Nothing to be done" in noop.stdout + noop.stderr
    assert raw_mtimes(work) == before

    write_jpeg(tiny_images / "added.jpg", 100, 80, seed=42)
    added = snakemake(work, config, LIST)
    assert jobs_run(added) == {"raw": 1, "input_list": 1}
    assert len(listed(work)) == 5
    after_add = raw_mtimes(work)
    assert {k: v for k, v in after_add.items() if k in before} == before

    write_jpeg(tiny_images / "img1.jpg", 240, 320, seed=77)  # same name, new content
    edited = snakemake(work, config, LIST)
    assert jobs_run(edited) == {"raw": 1, "input_list": 1}
    changed = {k for k, v in raw_mtimes(work).items() if after_add.get(k) != v}
    assert changed == {"results/raw/img1.jpg.raw"}

    (tiny_images / "added.jpg").unlink()
    removed = snakemake(work, config, LIST)
    assert jobs_run(removed) == {"input_list": 1}
    assert not any("added.jpg" in line for line in listed(work))
    assert len(listed(work)) == 4

    config["preprocess"]["layout"] = "NCHW"
    relayout = snakemake(work, config, LIST)
    assert jobs_run(relayout)["raw"] == 4
    assert (work / "results/input_list.txt").read_bytes() == list_bytes  # same set, same order, same text


def test_dry_run_tells_what_would_run_and_writes_nothing(tmp_path, tiny_images):
    work = tmp_path / "work"
    done = snakemake(work, {"images": str(tiny_images), **ALL_CALIBRATION}, "-n", LIST)
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", done.stdout, flags=re.M))
    assert stats["raw"] == "4" and stats["input_list"] == "1" and stats["total"] == "5"
    assert not (work / "results").exists()


def test_odd_file_names_work_and_never_reach_a_shell(tmp_path):
    images = tmp_path / "my images"
    names = ["with space.jpg", "$(touch pwned).jpg", "it's \"quoted\".jpg", "ünïcødé 图片.JPG",
             "semi;colon & amp.jpeg", "back`tick`.jpg", "percent%20.png", "colon:=x.jpg"]
    for i, name in enumerate(names):
        write_jpeg(images / name, 50 + i, 40, seed=i)
    work = tmp_path / "work"
    snakemake(work, {"images": str(images), "input_list": {"paths": "relative"},
                     "preprocess": {"height": 32, "width": 32}, **ALL_CALIBRATION}, LIST)
    assert not list(tmp_path.rglob("pwned")) and not (work / "pwned").exists()
    lines = listed(work)
    assert len(lines) == len(names)
    for line in lines:
        assert len(line.split()) == 1 and ":=" not in line  # one whitespace-free token per line
        assert (work / line).stat().st_size == 32 * 32 * 3 * 4


def test_bad_image_fails_naming_the_file_and_images_stay_untouched(tmp_path, tiny_images):
    (tiny_images / "broken.jpg").write_bytes(b"not a jpeg at all")
    before = tree_snapshot(tiny_images)
    for p in [tiny_images, *tiny_images.rglob("*")]:  # the workflow must not need write access
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        work = tmp_path / "work"
        failed = snakemake(work, {"images": str(tiny_images), **ALL_CALIBRATION}, LIST, check=False)
        assert failed.returncode != 0
        assert f"cannot use image {tiny_images / 'broken.jpg'}: not a decodable image" in failed.stderr
        assert not (work / "results/input_list.txt").exists()
        assert not (work / "results/raw/broken.jpg.raw").exists()

        skipped = snakemake(work, {"images": str(tiny_images), "on_bad_image": "skip", **ALL_CALIBRATION}, LIST,
                            "results/reports/skipped_images.tsv")
        assert jobs_run(skipped)["input_list"] == 1
        assert len(listed(work)) == 4
        report = (work / "results/reports/skipped_images.tsv").read_text().splitlines()
        assert report[1].startswith("broken.jpg\tcalibration\tnot a decodable image")
        assert tree_snapshot(tiny_images) == before
    finally:
        for p in [tiny_images, *tiny_images.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.mark.parametrize("config, message", [
    ({"imagez": "x"}, "'imagez' was unexpected"),
    ({"preprocess": {"height": "tall"}}, "'tall' is not of type 'integer'"),
    ({"preprocess": {"layout": "HWC"}}, "'HWC' is not one of"),
    ({"on_bad_image": "ignore"}, "'ignore' is not one of"),
    ({"images": "/no/such/folder"}, "config key 'images': folder '/no/such/folder' does not exist"),
])
def test_config_errors_fail_at_start_naming_the_key(tmp_path, config, message):
    done = snakemake(tmp_path / "work", config, "-n", LIST, check=False)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr


def test_empty_image_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    done = snakemake(tmp_path / "work", {"images": str(tmp_path / "empty")}, "-n", LIST, check=False)
    assert done.returncode != 0
    assert "no .jpg/.jpeg/.png files under" in done.stdout + done.stderr


def test_uint8_raws_hold_the_letterboxed_pixels(tmp_path, tiny_images):
    work = tmp_path / "work"
    snakemake(work, {"images": str(tiny_images), "preprocess": {"dtype": "uint8", "height": 64, "width": 64},
                     **ALL_CALIBRATION}, LIST)
    raw = np.fromfile(work / "results/raw/img0.jpg.raw", np.uint8).reshape(64, 64, 3)
    assert raw.shape == (64, 64, 3) and raw[0, 0].tolist() == [114, 114, 114]  # 320x240 -> top padding
