"""Class labels of images, from one of three sources: YOLO .txt files, a COCO JSON, or the float model's
own detections from the calibration pass (pseudo-labels). Malformed lines are reported with file and
line, never fatal. One loader serves the coverage and the accuracy reports alike."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LABEL_SOURCES = ("yolo", "coco", "pseudo")


@dataclass
class LabelProblem:
    file: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}"


@dataclass
class Labels:
    """Class ids per image (one entry per instance), their boxes (x1, y1, x2, y2 as fractions of the
    image's width and height; absent for pseudo-labels), where they came from, and what was wrong."""

    source: str
    per_image: dict[str, list[int]]
    problems: list[LabelProblem] = field(default_factory=list)
    boxes: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)


def read_yolo_file(path: Path, num_classes: int) -> tuple[list[int], list[tuple], list[LabelProblem]]:
    """`class cx cy w h` per line, coordinates normalised to 0..1. Bad lines are reported, not fatal."""
    classes, boxes, problems = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            problems.append(LabelProblem(str(path), number, f"{len(fields)} columns, expected 5 (class cx cy w h)"))
            continue
        try:
            cls = int(fields[0])
            coords = [float(v) for v in fields[1:]]
        except ValueError:
            problems.append(LabelProblem(str(path), number, f"not numbers: {line.strip()!r}"))
            continue
        if not 0 <= cls < num_classes:
            problems.append(LabelProblem(str(path), number, f"class id {cls} outside 0..{num_classes - 1}"))
            continue
        if not all(0.0 <= v <= 1.0 for v in coords) or coords[2] <= 0 or coords[3] <= 0:
            problems.append(LabelProblem(str(path), number, f"box {coords} is not normalised to 0..1"))
            continue
        classes.append(cls)
        cx, cy, w, h = coords
        boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return classes, boxes, problems


def yolo_label_path(labels_dir: str | Path, image: str) -> Path:
    """labels/<image path with .txt instead of its extension>, YOLO's convention."""
    return Path(labels_dir) / Path(image).with_suffix(".txt")


def read_yolo_labels(labels_dir: str | Path, images: list[str], num_classes: int) -> Labels:
    per_image, boxes, problems = {}, {}, []
    for image in images:
        path = yolo_label_path(labels_dir, image)
        if path.is_file():
            per_image[image], boxes[image], found = read_yolo_file(path, num_classes)
            problems += found
        else:
            per_image[image], boxes[image] = [], []  # YOLO's convention: no file means no objects
    return Labels("yolo", per_image, problems, boxes)


def read_coco_labels(path: str | Path, images: list[str], names: list[str]) -> Labels:
    """COCO JSON: images matched by file_name (relative path, or base name), categories by name when
    they match the model's names, else by position of the category id."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    by_name = {name: i for i, name in enumerate(names)}
    categories = sorted(data.get("categories", []), key=lambda c: c["id"])
    cat_to_class = {c["id"]: by_name.get(c["name"], i) for i, c in enumerate(categories)}
    file_of = {img["id"]: img["file_name"] for img in data.get("images", [])}
    size_of = {img["id"]: (img.get("width"), img.get("height")) for img in data.get("images", [])}
    wanted = {image: image for image in images} | {Path(image).name: image for image in images}
    per_image: dict[str, list[int]] = {image: [] for image in images}
    boxes: dict[str, list[tuple]] = {image: [] for image in images}
    problems = []
    for index, ann in enumerate(data.get("annotations", [])):
        image = wanted.get(file_of.get(ann.get("image_id"), ""))
        if image is None:
            continue
        if ann.get("category_id") not in cat_to_class:
            problems.append(LabelProblem(str(path), index, f"annotation {ann.get('id')}: unknown category "
                                                            f"{ann.get('category_id')}"))
            continue
        width, height = size_of.get(ann["image_id"], (None, None))
        bbox = ann.get("bbox")
        if not (width and height and isinstance(bbox, list) and len(bbox) == 4):
            problems.append(LabelProblem(str(path), index, f"annotation {ann.get('id')}: no bbox or image size"))
            continue
        x, y, w, h = bbox
        per_image[image].append(cat_to_class[ann["category_id"]])
        boxes[image].append((x / width, y / height, (x + w) / width, (y + h) / height))
    return Labels("coco", per_image, problems, boxes)


def read_pseudo_labels(detection_files: list[str], images: list[str]) -> Labels:
    """The float model's own detections (from the calibration pass) as labels."""
    per_image: dict[str, list[int]] = {image: [] for image in images}
    for path in detection_files:
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row["image"] in per_image:
                    per_image[row["image"]].append(int(row["class"]))
    return Labels("pseudo", per_image)


def load_labels(source: str, images: list[str], names: list[str], yolo_dir: str | None = None,
                coco_json: str | None = None, detection_files: list[str] = ()) -> Labels:
    """Labels of `images` from the chosen source (see :func:`label_source`)."""
    if source == "yolo":
        return read_yolo_labels(yolo_dir, images, len(names))
    if source == "coco":
        return read_coco_labels(coco_json, images, names)
    if source == "pseudo":
        return read_pseudo_labels(list(detection_files), images)
    raise ValueError(f"unknown label source {source!r}; known: {', '.join(LABEL_SOURCES)}")


def truth_boxes(labels: Labels, image: str, letterbox: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """An image's label boxes in original-image pixels and their classes, or None when the labels have
    no boxes for it (pseudo-labels carry classes only)."""
    if labels.source == "pseudo" or image not in labels.per_image:
        return None
    boxes = np.asarray(labels.boxes.get(image, []), np.float32).reshape(-1, 4)
    boxes = boxes * np.array([letterbox["orig_width"], letterbox["orig_height"]] * 2, np.float32)
    return boxes, np.asarray(labels.per_image[image], np.int64)
