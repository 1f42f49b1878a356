"""Class names: COCO's 80 (the default model's and YOLOv5's), and reading names from a model or file."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import onnx

COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def names_from_metadata(model: onnx.ModelProto) -> list[str] | None:
    """Class names stored in the model: a JSON list (qcal's Darknet conversion) or the dict literal
    "{0: 'person', ...}" that YOLOv5's export writes."""
    value = next((p.value for p in model.metadata_props if p.key == "names"), None)
    if not value:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    if isinstance(parsed, dict):
        return [str(parsed[k]) for k in sorted(parsed)]
    if isinstance(parsed, list):
        return [str(v) for v in parsed]
    return None


def read_names_file(path: str | Path) -> list[str]:
    """One class name per line; blank lines are ignored (Darknet's coco.names, YOLO's names files)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def class_names(names_file: str | Path | None, model_names: list[str] | None) -> list[str]:
    """The class names every report uses, in this order of preference: the user's names file, the
    names stored in the model, COCO's 80."""
    if names_file:
        return read_names_file(names_file)
    return list(model_names) if model_names else list(COCO_NAMES)
