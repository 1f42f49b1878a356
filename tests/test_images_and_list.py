"""Image discovery, raw naming and the SNPE input list, as plain functions."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest

from qcal.images import raw_stem, scan_images, search_sample
from qcal.errors import QcalError
from qcal.input_list import input_list_text, list_line, write_image_reports, write_input_list


def test_find_images_is_recursive_sorted_and_case_insensitive(tmp_path):
    for name in ["b.jpg", "a.JPG", "c.jpeg", "d.png", "e.Jpeg", "sub/f.jpg", "notes.txt", ".hidden.jpg",
                 ".git/x.jpg", "g.jpg.bak"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert scan_images(tmp_path).images == ["a.JPG", "b.jpg", "c.jpeg", "d.png", "e.Jpeg", "sub/f.jpg"]


@pytest.mark.parametrize("name", ["plain.jpg", "with space.jpg", "tab\there.jpg", "100%.jpg",
                                  "a:=b.jpg", "ünïcødé 图片.jpg", "$(touch pwned).jpg", "it's \"quoted\".jpg",
                                  "dir with space/x.jpg", "%41.jpg", "ideographic\u3000space.jpg"])
def test_raw_stem_is_reversible_and_safe_for_snpe_lists(name):
    stem = raw_stem(name)
    assert unquote(stem) == name
    assert not any(ch.isspace() for ch in stem) and ":" not in stem
    assert stem == name or any(ch in name for ch in " \t%:\u3000")  # only unsafe names change


def sidecar(tmp_path, image: str, status: str = "ok", error: str = "") -> tuple[str, str]:
    raw = tmp_path / "raw" / f"{raw_stem(image)}.raw"
    meta = raw.with_suffix(".json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(b"")
    letterbox = {k: 1 for k in ["orig_width", "orig_height", "scale_x", "scale_y", "resized_width",
                                "resized_height", "pad_left", "pad_top", "pad_right", "pad_bottom"]}
    meta.write_text(json.dumps({"image": image, "status": status, "error": error, "letterbox": letterbox,
                                "exif_orientation": 1}))
    return str(raw.relative_to(tmp_path)), str(meta.relative_to(tmp_path))


def test_input_list_is_sorted_stable_and_skips_bad_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pairs = [sidecar(tmp_path, "z.jpg"), sidecar(tmp_path, "a b.jpg"), sidecar(tmp_path, "m.jpg", "skipped", "bad")]
    raws, metas = zip(*pairs)
    listed, skipped = write_input_list(list(raws), list(metas), "list.txt", "index.tsv", absolute=False)
    assert (listed, skipped) == (2, 1)
    assert (tmp_path / "list.txt").read_text() == "raw/a%20b.jpg.raw\nraw/z.jpg.raw\n"
    first = (tmp_path / "list.txt").read_bytes()
    write_input_list(list(reversed(raws)), list(reversed(metas)), "list.txt", "index.tsv", absolute=False)
    assert (tmp_path / "list.txt").read_bytes() == first
    index = (tmp_path / "index.tsv").read_text().splitlines()
    assert index[0].startswith("image\traw\torig_width") and index[1].startswith("a b.jpg\t")


def test_input_list_absolute_paths_and_named_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    entries = [("raw/a.raw", {"status": "ok"})]
    assert input_list_text(entries, "images", absolute=True) == f"images:={tmp_path}/raw/a.raw\n"
    assert input_list_text(entries, None, absolute=False) == "raw/a.raw\n"


def test_list_line_refuses_white_space_it_cannot_encode():
    with pytest.raises(ValueError, match="white space"):
        list_line("/my project/results/raw/a.raw", None, absolute=False)


def test_all_images_skipped_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw, meta = sidecar(tmp_path, "m.jpg", "skipped", "bad")
    with pytest.raises(QcalError, match="no usable calibration image"):
        write_input_list([raw], [meta], "list.txt", "index.tsv")


def test_skipped_report_names_every_image_left_out_from_both_sets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, good = sidecar(tmp_path, "z.jpg")
    _, bad = sidecar(tmp_path, "m.jpg", "skipped", "corrupt")
    _, held_out_bad = sidecar(tmp_path, "e.jpg", "skipped", "truncated")
    counts = write_image_reports({"calibration": [good, bad], "evaluation": [held_out_bad]},
                                 {"calibration": [("pipe.jpg", "is not a regular file")], "evaluation": []},
                                 "skipped.tsv", "warnings.tsv")
    assert counts == (3, 0)
    assert (tmp_path / "skipped.tsv").read_text().splitlines() == [
        "image\tset\treason", "e.jpg\tevaluation\ttruncated", "m.jpg\tcalibration\tcorrupt",
        "pipe.jpg\tcalibration\tis not a regular file"]


def test_the_search_sample_is_stable_when_images_come_and_go():
    images = [f"dir/img{i:03d}.jpg" for i in range(300)]
    sample = search_sample(images, 100)
    assert len(sample) == 100 and sample == sorted(sample) and set(sample) <= set(images)
    assert search_sample(list(reversed(images)), 100) == sample  # the listing order does not matter
    grown = search_sample(images + ["dir/new.jpg"], 100)
    assert len(set(grown) - set(sample)) <= 1  # one more image changes at most one member
    shrunk = search_sample([i for i in images if i != sample[0]], 100)
    assert len(set(sample) - set(shrunk)) == 1 and sample[0] not in shrunk
    assert search_sample(images[:5], 100) == images[:5] and search_sample(images, 0) == []
