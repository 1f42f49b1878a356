# Shared helpers: config validation, image discovery, input functions. No rule logic lives here.
# Jobs run `python -m qcal.<stage>` in the active environment, where qcal is installed (pip install -e .).
import json
import os
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from qcal.images import find_images, image_of_stem, is_held_out, raw_stem, search_sample, shard_of
from qcal.preprocess import resolve_profile

validate(config, os.path.join(workflow.basedir, "config", "schema.yaml"))

DEFAULT_IMAGES = config["images"] == "default"
IMAGE_DIR = "resources/images" if DEFAULT_IMAGES else config["images"]
if not DEFAULT_IMAGES and not os.path.isdir(IMAGE_DIR):
    raise WorkflowError(f"config key 'images': folder {IMAGE_DIR!r} does not exist")

_preprocess = dict(config["preprocess"])
PROFILE_NAME = _preprocess.pop("profile")
try:
    PROFILE = resolve_profile(PROFILE_NAME, _preprocess)
except ValueError as err:
    raise WorkflowError(f"config key 'preprocess': {err}")
# Passed to every raw job as one parameter: any change to it rebuilds every raw.
PROFILE_SETTINGS = json.dumps(_preprocess, sort_keys=True)


DEFAULT_MODEL = config["model"] == "default"
MODEL_PATH = (f"resources/models/yolov3-tiny-{PROFILE.height}x{PROFILE.width}.onnx" if DEFAULT_MODEL
              else config["model"])
if not DEFAULT_MODEL:
    from qcal.model import ModelError, check_model_file

    try:
        check_model_file(MODEL_PATH, config["input_list"]["input_name"], PROFILE.height, PROFILE.width)
    except ModelError as err:
        raise WorkflowError(f"config key 'model': {err}")


TEMPORARY_RAWS = config["raws"] == "temporary"
SNPE_BACKEND = config["quantization"]["backend"] == "snpe"
if TEMPORARY_RAWS and SNPE_BACKEND:
    raise WorkflowError("config key 'raws': the snpe backend reads the raws through the input list; keep them")
if SNPE_BACKEND:
    from qcal.snpe import SnpeError, check_raw_format, find_tools

    try:
        find_tools()
        check_raw_format(PROFILE.layout)
    except SnpeError as err:
        raise WorkflowError(f"config key 'quantization.backend': {err}")


LABELS = config["labels"]
LABEL_SOURCE = LABELS["source"]
if LABEL_SOURCE == "auto":
    LABEL_SOURCE = "yolo" if LABELS["yolo_dir"] else "coco" if LABELS["coco_json"] else "pseudo"
for _key, _needed, _exists in (
    ("yolo_dir", LABEL_SOURCE == "yolo", os.path.isdir),
    ("coco_json", LABEL_SOURCE == "coco", os.path.isfile),
    ("names", bool(LABELS["names"]), os.path.isfile),
):
    if _needed and not (LABELS[_key] and _exists(LABELS[_key])):
        raise WorkflowError(f"config key 'labels.{_key}': {LABELS[_key]!r} does not exist")


SNPE_FLAGS = " ".join(
    flag
    for flag, wanted in (
        ("--per-channel", config["quantization"]["per_channel"]),
        ("--native-uint8", PROFILE.dtype == "uint8"),
    )
    if wanted
)


EVALUATION = config["evaluation"]
EVAL_SEPARATE = EVALUATION["images"] not in (None, "calibration")
HOLDOUT = EVALUATION["holdout"] if EVALUATION["images"] is None else 0.0
if EVAL_SEPARATE and not os.path.isdir(EVALUATION["images"]):
    raise WorkflowError(f"config key 'evaluation.images': folder {EVALUATION['images']!r} does not exist")


# Input functions run once per job while the DAG is built: list and split the folder once, not per call.
_MEMO = {}


def folder_images():
    """Image paths relative to IMAGE_DIR; waits for the default photos to be fetched when used."""
    if DEFAULT_IMAGES:
        checkpoints.default_images.get()  # raises until fetched, so nothing is cached before that
    if "folder" not in _MEMO:
        images = find_images(IMAGE_DIR)
        if not images:
            raise WorkflowError(f"config key 'images': no .jpg/.jpeg/.png files under {IMAGE_DIR!r}")
        _MEMO["folder"] = images
    return _MEMO["folder"]


def calibration_images():
    if "calibration" not in _MEMO:
        images = [i for i in folder_images() if not is_held_out(i, HOLDOUT)]
        if not images:
            raise WorkflowError(f"config key 'evaluation.holdout': all {len(folder_images())} images were held out")
        _MEMO["calibration"] = images
    return _MEMO["calibration"]


def evaluation_raws(kind):
    """Raws (kind "raw") or sidecars ("json") of the evaluation images."""
    if EVAL_SEPARATE:
        return [f"results/eval_raw/{raw_stem(i)}.{kind}" for i in find_images(EVALUATION["images"])]
    if EVALUATION["images"] == "calibration":
        return [f"results/raw/{raw_stem(i)}.{kind}" for i in calibration_images()]
    return [f"results/raw/{raw_stem(i)}.{kind}" for i in folder_images() if is_held_out(i, HOLDOUT)]


def evaluation_raw_files(wildcards):
    return evaluation_raws("raw")


def evaluation_sidecars(wildcards):
    return evaluation_raws("json")


def eval_image_of_raw(wildcards):
    return os.path.join(EVALUATION["images"], image_id_of_raw(wildcards))


def raw_files(wildcards):
    return [f"results/raw/{raw_stem(i)}.raw" for i in calibration_images()]


def raw_sidecars(wildcards):
    return [f"results/raw/{raw_stem(i)}.json" for i in calibration_images()]


def raw_options(image_root):
    """The preprocess command's constant options, quoted once: per-job placeholders cost DAG time."""
    return shlex.join(
        ["--profile", PROFILE_NAME, "--settings", PROFILE_SETTINGS, "--on-bad-image", config["on_bad_image"]]
        + ["--image-root", image_root]
    )


def image_id_of_raw(wildcards):
    return image_of_stem(wildcards.stem)


def image_of_raw(wildcards):
    return os.path.join(IMAGE_DIR, image_id_of_raw(wildcards))


def shard_images(shard):
    if "shards" not in _MEMO:
        shards = {}
        for image in calibration_images():
            shards.setdefault(shard_of(image, config["calibration"]["shards"]), []).append(image)
        _MEMO["shards"] = shards
    return _MEMO["shards"].get(int(shard), [])


def shard_raws(wildcards):
    return [f"results/raw/{raw_stem(i)}.raw" for i in shard_images(wildcards.shard)]


def shard_sidecars(wildcards):
    return [f"results/raw/{raw_stem(i)}.json" for i in shard_images(wildcards.shard)]


def coverage_label_inputs(wildcards):
    """What the coverage report reads besides sidecars: label files, or the shards' detections."""
    if LABEL_SOURCE == "yolo":
        from qcal.coverage import yolo_label_path

        paths = [yolo_label_path(LABELS["yolo_dir"], i) for i in calibration_images()]
        return [str(p) for p in paths if p.is_file()]
    if LABEL_SOURCE == "coco":
        return [LABELS["coco_json"]]
    return expand("results/calibration/shard-{shard}.detections.tsv", shard=range(config["calibration"]["shards"]))


def search_raws(kind):
    """The accuracy search reads the evaluation images only when a budget is set."""
    return evaluation_raws(kind) if config["quantization"]["max_drop"] is not None else []


def search_calibration_raws(kind):
    """...and a stable sample of the calibration images, which give its check more detections."""
    if config["quantization"]["max_drop"] is None:
        return []
    count = config["quantization"]["search_calibration_images"]
    return [f"results/raw/{raw_stem(i)}.{kind}" for i in search_sample(calibration_images(), count)]
