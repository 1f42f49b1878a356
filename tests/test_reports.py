"""Coverage and accuracy reports: label parsing, statuses and warnings, the ACT flag, the real workflow
with YOLO labels, and the HTML rendered in a real headless browser."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import onnx
import pandas as pd
import pytest
from PIL import Image

from conftest import jobs_run, snakemake, write_jpeg
from qcal.evaluate import Evaluation, Scores
from qcal.labels import Labels, read_coco_labels, read_yolo_labels
from qcal.report.accuracy import accuracy_table
from qcal.report.coverage import CoverageSettings, coverage_table, near_duplicate_groups, summarize
from qcal.synthetic import build_tiny

NAMES = ["person", "car", "dog"]


def test_yolo_labels_report_bad_lines_with_file_and_line(tmp_path):
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n1 0.5 1.5 0.1 0.1\n2 0.5 0.5\n"
                                    "x 0.1 0.1 0.1 0.1\n\n1 0.2 0.2 0.1 0.1\n")
    labels = read_yolo_labels(tmp_path, ["a.jpg", "none.jpg"], len(NAMES))
    assert labels.per_image == {"a.jpg": [0, 1], "none.jpg": []}
    assert labels.boxes["a.jpg"][0] == pytest.approx((0.4, 0.4, 0.6, 0.6))
    problems = [str(p) for p in labels.problems]
    assert problems == [f"{tmp_path / 'a.txt'}:2: class id 7 outside 0..2",
                        f"{tmp_path / 'a.txt'}:3: box [0.5, 1.5, 0.1, 0.1] is not normalised to 0..1",
                        f"{tmp_path / 'a.txt'}:4: 3 columns, expected 5 (class cx cy w h)",
                        f"{tmp_path / 'a.txt'}:5: not numbers: 'x 0.1 0.1 0.1 0.1'"]


def test_coco_labels_match_by_file_name_and_category_name(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "sub/a.jpg", "width": 100, "height": 50}],
            "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 18, "bbox": [10, 5, 20, 10]},
                            {"id": 6, "image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1]}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    labels = read_coco_labels(tmp_path / "c.json", ["sub/a.jpg"], NAMES)
    assert labels.per_image == {"sub/a.jpg": [2]}
    assert labels.boxes["sub/a.jpg"][0] == pytest.approx((0.1, 0.1, 0.3, 0.3))
    assert "unknown category 99" in str(labels.problems[0])


def test_statuses_and_warnings():
    per_image = {f"i{n}.jpg": [0] for n in range(4)} | {"j.jpg": [1, 1], "k.jpg": []}
    labels = Labels("yolo", per_image)
    table = coverage_table(labels, NAMES, min_images=3)
    assert table.set_index("class")["status"].to_dict() == {"person": "OK", "car": "LOW", "dog": "MISSING"}
    assert table.set_index("class").loc["car", "instances"] == 2
    hashes = {f"i{n}.jpg": 0xFFFF0000FFFF0000 ^ n for n in range(4)} | {"j.jpg": 0x0F0F0F0F0F0F0F0F, "k.jpg": 0}
    groups = near_duplicate_groups(hashes, max_distance=4)
    assert groups == [["i0.jpg", "i1.jpg", "i2.jpg", "i3.jpg"]]
    summary = summarize(table, labels, groups, CoverageSettings())
    text = " ".join(summary.warnings)
    assert "only 6 calibration images" in text and "one scene dominates: 4 of 6 images" in text
    assert "1 class never seen and 1 seen in fewer than 3 images" in text
    assert summary.images_without_objects == ["k.jpg"] and summary.collect_more == ["dog (0)", "car (1)"]


def test_act_flag_needs_low_coverage_and_a_large_drop():
    coverage = pd.DataFrame([[0, "person", 10, 20, 0.5, "OK"], [1, "car", 1, 1, 0.05, "LOW"],
                             [2, "dog", 1, 1, 0.05, "LOW"]],
                            columns=["class_id", "class", "images", "instances", "share", "status"])
    classes = {0: {"ap50": 0.5, "ap50_95": 0.3, "n_truth": 5}, 1: {"ap50": 0.6, "ap50_95": 0.4, "n_truth": 2},
               2: {"ap50": 0.95, "ap50_95": 0.8, "n_truth": 2}}
    ev = Evaluation(3, True, None, {"cpu": Scores({"classes": classes, "map50": 0.7, "map50_95": 0.5}, None, None, {})})
    table = accuracy_table(ev, coverage, flag_drop=0.1).set_index("class")
    assert table["action"].to_dict() == {"person": "", "car": "ACT", "dog": ""}  # person drops but is covered


def make_labelled_project(tmp_path, size=64):
    images, evals, labels = tmp_path / "images", tmp_path / "eval", tmp_path / "labels"
    for folder, count in ((images, 6), (evals, 3)):
        for i in range(count):
            write_jpeg(folder / f"{folder.name}{i}.jpg", 80 + 7 * i, 60 + 3 * i, seed=i + count)
            (labels / f"{folder.name}{i}.txt").parent.mkdir(parents=True, exist_ok=True)
            (labels / f"{folder.name}{i}.txt").write_text(f"{i % 3} 0.5 0.5 0.4 0.4\n0 0.2 0.3 0.1 0.2\n")
    (labels / "images1.txt").write_text("0 0.5 0.5 0.4 0.4\n99 0.5 0.5 0.1 0.1\n")  # a bad class id
    model = tmp_path / "tiny.onnx"
    onnx.save(build_tiny(size=(size, size), num_classes=3), model)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    return {"images": str(images), "model": str(model), "preprocess": {"height": size, "width": size},
            "calibration": {"shards": 2}, "evaluation": {"images": str(evals)},
            "labels": {"yolo_dir": str(labels), "names": str(names)}}


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("labelled")
    config = make_labelled_project(tmp_path)
    done = snakemake(tmp_path / "work", config, "all")
    return tmp_path / "work", config, done


def test_workflow_reports_with_yolo_labels(labelled_run):
    work, config, done = labelled_run
    assert jobs_run(done)["coverage"] == 1 and jobs_run(done)["evaluate_accuracy"] == 1
    assert jobs_run(done)["eval_raw"] == 3
    output = done.stdout + done.stderr
    assert "qcal calibration coverage: 6 images, labels from yolo" in output
    assert re.search(r"qcal accuracy on \d test images? \(used by neither calibration nor the search\)", output)
    coverage = pd.read_csv(work / "results/reports/coverage.tsv", sep="\t").set_index("class")
    assert coverage.loc["person", "images"] == 6 and coverage.loc["person", "instances"] == 8
    assert coverage.loc["car", "status"] == "LOW" and coverage.loc["dog", "status"] == "LOW"
    summary = json.loads((work / "results/reports/coverage.json").read_text())
    assert summary["label_problems"] == [f"{config['labels']['yolo_dir']}/images1.txt:2: class id 99 outside 0..2"]
    accuracy = json.loads((work / "results/reports/accuracy.json").read_text())
    tested = accuracy["evaluation_images"]
    assert 1 <= tested <= 3 and "float_vs_labels" in accuracy and "quantized_vs_labels" in accuracy["backends"]["cpu"]
    assert set(accuracy["backends"]["cpu"]["sqnr_db"]) == {"boxes", "objectness", "classes"}
    assert accuracy["headline"]["backend"] == "cpu" and accuracy["headline"]["float_objects"] >= 0
    table = pd.read_csv(work / "results/reports/accuracy.tsv", sep="\t")
    assert {"coverage", "ap50_agreement", "float_ap50", "quant_ap50", "ap50_drop", "action"} <= set(table.columns)
    # the default budget's search scored each step on the evaluation images and the calibration sample
    search = json.loads((work / "results/quantize_summary.json").read_text())["search"]
    # the search tuned on the other evaluation images (and the calibration sample): none of them is a test image
    assert search["images"] == {"evaluation": 3 - tested, "calibration": 6} and search["steps"][0]["precision"] == "int8"
    assert f"accuracy search on {3 - tested} evaluation and 6 calibration images" in \
        (work / "results/quantize_summary.txt").read_text()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.parametrize("report, tsv", [("coverage", "coverage.tsv"), ("accuracy", "accuracy.tsv")])
def test_html_reports_render_in_a_real_browser(labelled_run, tmp_path, report, tsv):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("chromium is not installed")
    work, _, _ = labelled_run
    page = work / "results/reports" / f"{report}.html"
    base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    shot = tmp_path / f"{report}.png"
    subprocess.run([*base, "--window-size=1200,5000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # the chart's bars were drawn on screen: the page shows their colour, which no other element uses
    bar = {"coverage": (0xe0, 0x8a, 0x00), "accuracy": (0x3a, 0x6e, 0xa5)}[report]
    assert (np.abs(pixels - bar).sum(axis=2) < 30).sum() > 200
    images = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', dom)
    assert images and all(Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 100 for data in images)
    cells = re.findall(r"<td>([^<]*)</td>", dom)
    table = pd.read_csv(work / "results/reports" / tsv, sep="\t")
    for _, row in table.iterrows():  # every class row's name and counts are in the rendered page
        assert str(row["class"]) in cells
    count_column = "images" if report == "coverage" else "calibration_images"
    assert all(str(v) in cells for v in table[count_column])
    if report == "accuracy":
        overall = json.loads((work / "results/reports/accuracy.json").read_text())
        assert f"{overall['evaluation_images']}" in cells
